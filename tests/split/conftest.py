import pytest
import torch

from splitcomp.link.codecs import RawCodec


def split_output(plan, cut, x, over_wire=False):
    """tail(head(x)) for one cut; ``over_wire`` sends every crossing tensor through RawCodec first."""
    head, tail = plan.split(cut)
    values = head(x)
    assert isinstance(values, tuple) and len(values) == len(plan.cut(cut).crossing)
    if over_wire:
        codec = RawCodec()
        values = tuple(codec.decode(codec.encode(v)) if isinstance(v, torch.Tensor) else v for v in values)
    return tail(values)


@pytest.fixture
def assert_exact():
    """assert_exact(model, plan, x, cuts, over_wire=False): tail(head(x)) equals model(x) bit for bit."""

    def check(model, plan, x, cuts, over_wire=False):
        with torch.no_grad():
            reference = model(x)
            wrong = [plan.cut(c).name for c in cuts if not torch.equal(split_output(plan, c, x, over_wire), reference)]
        assert not wrong, f"split output differs from the model at cuts {wrong}"

    return check


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a small shared CPU, two threads contending make tiny convs 100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
