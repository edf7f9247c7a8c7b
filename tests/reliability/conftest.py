import pytest


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread, as the CLI subprocesses get (OMP_NUM_THREADS=1): the tiny model gains nothing
    from more on a shared 2-core machine, and equal thread counts keep the float results comparable."""
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
