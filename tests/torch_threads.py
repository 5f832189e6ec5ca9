"""Torch on one thread for tests that build bundles or run reference models: on this shared
2-core machine torch's default 2-thread pool makes small models 10-200x slower (measured:
`vqrt build` of golden set A 4.7 s -> 0.45 s)."""
import contextlib


@contextlib.contextmanager
def one_torch_thread():
    import torch  # only tests that already use torch call this
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
