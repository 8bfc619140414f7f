"""The first summary in a fresh process costs what the second does (issue 12).

Several of torch's meta kernels (addmm's, relu's, stack's, the in-place add's)
are Python reference implementations whose first call imports torch._dynamo
(~0.7 s) or sympy (~0.3 s). netsight answers those ops with its checked shape
rules, and until dynamo is loaded checks a rule against torch's C++ CPU kernel on
tiny tensors of the same class instead of the meta kernel. The test checks the
cause, in a fresh interpreter: neither module gets imported by a summary of a
model made of Linear, ReLU and LSTM layers, and the counts are right. (The time
itself is in benchmarks/bench_summary.py --only first, BENCHMARKS.md.)
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    from torch import nn
    import netsight

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(16, 32, batch_first=True)
            self.head = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 4))

        def forward(self, x):
            out, _ = self.lstm(x)
            return self.head(out[:, -1])

    before = {m for m in ("torch._dynamo", "sympy") if m in sys.modules}
    s = netsight.summary(Net(), input_size=(2, 10, 16))
    print(json.dumps({
        "before": sorted(before),
        "after": sorted(m for m in ("torch._dynamo", "sympy") if m in sys.modules),
        "mult_adds": s.total_mult_adds,
        "execution": s.trace.execution,
    }))
    """
)


def test_a_first_summary_imports_neither_dynamo_nor_sympy() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT], capture_output=True, text=True, check=False, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found["before"] == []
    assert found["after"] == [], f"the first summary imported {found['after']}"
    assert found["execution"] == "meta"
    # LSTM: 10 steps x 2 sequences x 4 gates x 32 x (16 + 32); head on 2 rows
    lstm = 10 * 2 * 4 * 32 * (16 + 32)
    head = 2 * (32 * 64 + 64 * 4)
    assert found["mult_adds"] == lstm + head
