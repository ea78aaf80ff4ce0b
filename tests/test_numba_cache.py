"""A kernel gives the same numbers compiled fresh and loaded from numba's cache.

numba compiled fastmath (reassociated) reductions inside a parallel loop differently on a fresh compile and
from its cache: the fused MVM's products differed by an ulp between a first run and every later one, and
so could cross an ADC step. This runs the fused MVM + ADC in two processes sharing an empty cache folder
(the first compiles and writes it, the second loads it) and compares the results bit for bit.
"""
import os
import subprocess
import sys

import numpy as np

_SCRIPT = r"""
import sys
import numpy as np
from bayesim import rng
from bayesim.crossbar import periphery

r = np.random.default_rng(3)
n, k, out = 64, 300, 12
xn = r.uniform(0, 1, (n, k)).astype(np.float32)
w = r.normal(0, 0.3, (out, k)).astype(np.float32)
starts = np.array([0, 128, 256, 300], np.int64)
blocks = np.concatenate([w[:, a:b].ravel() for a, b in zip(starts[:-1], starts[1:])])
u = np.empty((3, n, out), np.float32)
ones = np.ones((3, out), np.float32)
periphery.mvm_adc(xn, blocks, starts, u, 1, np.ones(n, np.float32), ones, ones, 0, 0.0, np.uint64(0),
                  rng.NORMAL_TABLE, np.zeros(n, np.int64), True, u)
np.save(sys.argv[1], u)
print(periphery.mvm_adc.stats.cache_hits.total(), periphery.mvm_adc.stats.cache_misses.total())
"""


def test_fused_mvm_same_fresh_and_cached(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba_cache"))
    runs = []
    for i in range(2):
        out = tmp_path / f"u{i}.npy"
        p = subprocess.run([sys.executable, "-c", _SCRIPT, str(out)], env=env, capture_output=True, text=True,
                           timeout=600)
        assert p.returncode == 0, p.stderr
        hits, misses = (int(v) for v in p.stdout.split()[-2:])
        runs.append((np.load(out), hits, misses))
    (u0, h0, m0), (u1, h1, m1) = runs
    assert (h0, m0) == (0, 1) and (h1, m1) == (1, 0)  # first compiled, second loaded from the cache
    np.testing.assert_array_equal(u0, u1)
