"""How OpenMP's wait policy and the thread count fare when another process shares the cores
(docs/results.md, "Sharing the CPU"). A SmolLM2-135M-shaped model (random weights, no download):
an update-like forward + backward of [8, 96] tokens and a decode-like prefill of [64, 40] then 24
KV-cached single-token steps, median of 3 each. Every setting runs in a fresh process (OpenMP reads
OMP_WAIT_POLICY once, at load), first quiet, then beside one `python -c "while True: pass"`.

A benchmark, not a test. Usage: python scripts/bench/threads_bench.py [--nice N]
(--nice -10 runs the measured processes and the competitor above anything else on the machine.)
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

WORKER = r"""
import os, sys, time
import torch
from transformers import LlamaConfig, LlamaForCausalLM
torch.set_num_threads(int(sys.argv[1]))
torch.manual_seed(0)
cfg = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                  num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True)
m = LlamaForCausalLM(cfg)
x = torch.randint(0, 49152, (8, 96))
def update():
    m(input_ids=x, labels=x).loss.backward()
@torch.no_grad()
def decode():
    out = m(input_ids=torch.randint(0, 49152, (64, 40)), use_cache=True)
    cache, t = out.past_key_values, out.logits[:, -1:].argmax(-1)
    for _ in range(24):
        out = m(input_ids=t, past_key_values=cache, use_cache=True)
        cache, t = out.past_key_values, out.logits[:, -1:].argmax(-1)
update(); decode()
res = []
for f in (update, decode):
    ts = []
    for _ in range(3):
        t0 = time.perf_counter(); f(); ts.append(time.perf_counter() - t0)
    res.append(sorted(ts)[1])
print(f"{res[0]:.2f} {res[1]:.2f}")
"""

SETTINGS = [("2 threads, spin then sleep (libgomp's default; rltrain before)", 2, "libgomp-default"),
            ("2 threads, sleep when waiting (OMP_WAIT_POLICY=PASSIVE, rltrain now)", 2, "PASSIVE"),
            ("1 thread", 1, "PASSIVE")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nice", type=int, default=0)
    a = ap.parse_args()
    pre = ["nice", "-n", str(a.nice)] if a.nice else []
    print("load {:.2f} {:.2f} {:.2f} at start".format(*os.getloadavg()))
    print(f"{'setting':72s} {'competitor':>10s} {'update s':>9s} {'decode s':>9s}")
    for competitor in (False, True):
        hog = subprocess.Popen(pre + [sys.executable, "-c", "while True: pass"]) if competitor else None
        try:
            for name, n, policy in SETTINGS:
                # an invalid OMP_WAIT_POLICY leaves libgomp on its default (it says so on stderr)
                env = dict(os.environ, OMP_WAIT_POLICY=policy, TRANSFORMERS_VERBOSITY="error")
                out = subprocess.run(pre + [sys.executable, "-W", "ignore", "-c", WORKER, str(n)], env=env,
                                     capture_output=True, text=True, check=True).stdout.split()
                print(f"{name:72s} {'yes' if competitor else 'no':>10s} {out[0]:>9s} {out[1]:>9s}", flush=True)
        finally:
            if hog:
                hog.kill()
                hog.wait()
    print("load {:.2f} {:.2f} {:.2f} at the end".format(*os.getloadavg()))


if __name__ == "__main__":
    main()
