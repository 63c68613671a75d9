"""Fixtures shared by every test folder."""

import pytest

from pcsim import parallel


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tests with torch's intra-op threads and numpy's BLAS on one thread each,
    restoring both afterwards: the test machine is shared, and its small problems only lose to
    thread oversubscription. A module asks for it with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    from threadpoolctl import threadpool_limits

    with parallel.threads(1), threadpool_limits(1):
        yield
