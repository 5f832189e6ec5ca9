from vqrt.cli import main

raise SystemExit(main())
