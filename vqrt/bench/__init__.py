"""`vqrt bench`: per-stage latency of bundles beside baselines and the machine's limits.

    measure.py    instruments: summaries of repeats, peak host / device memory, read bandwidth,
                  the progress bar (numpy only)
    suite.py      what is timed and how: contenders, the interleaved repeat loop, bandwidth
                  bounds, the JSON document (torch-free)
    baselines.py  the torch baselines and the ONNX Runtime int8 peer (needs the train extra)
    report.py     the table, markdown tables and plots from the JSON document
    command.py    the command line (argparse only at import)
"""
