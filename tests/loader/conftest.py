import pytest

from vtlvisor.memory import GuestMemory


@pytest.fixture
def memory():
    """16 MiB of guest RAM."""
    mem = GuestMemory(16 << 20)
    yield mem
    mem.close()
