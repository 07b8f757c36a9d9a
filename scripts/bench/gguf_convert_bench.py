"""SmolLM2's GGUF → HF conversion: rltrain's one-pass converter (engine.gguf_convert) vs transformers'
own GGUF loading (what rltrain used before), each in a fresh process, interleaved, best of --repeats.

A benchmark, not a test: run it with nothing else on the machine (it prints the load).
    python scripts/bench/gguf_convert_bench.py [--repeats 2]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

CODE = {
    "rltrain (one pass)": """
from pathlib import Path
from rltrain.engine.gguf_convert import convert_llama
from rltrain.engine.model import _smollm2_gguf_path
convert_llama(_smollm2_gguf_path(), Path(OUT))
""",
    "transformers": """
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from rltrain.engine.model import _smollm2_gguf_path
g = _smollm2_gguf_path()
model = AutoModelForCausalLM.from_pretrained(g.parent, gguf_file=g.name, dtype=torch.float32)
model.hf_quantizer = None
del model.config.quantization_config
model.save_pretrained(OUT, safe_serialization=True)
AutoTokenizer.from_pretrained(g.parent, gguf_file=g.name).save_pretrained(OUT)
""",
}
# Imports are timed apart from the conversion: both pay them, and a run pays them anyway.
WRAP = """
import time, sys
t = time.perf_counter()
import torch, transformers, gguf  # noqa: F401
OUT = sys.argv[1]
t1 = time.perf_counter()
{code}
print(time.perf_counter() - t1)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    print("load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    best = {name: float("inf") for name in CODE}
    for _ in range(a.repeats):
        for name, code in CODE.items():
            with tempfile.TemporaryDirectory() as out:
                p = subprocess.run([sys.executable, "-c", WRAP.format(code=code), out], capture_output=True,
                                   text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
                if p.returncode:
                    sys.exit(p.stderr[-2000:])
                t = float(p.stdout.strip().splitlines()[-1])
                best[name] = min(best[name], t)
                print(f"  {name:20s} {t:6.1f} s", flush=True)
    for name, t in best.items():
        print(f"best {name:20s} {t:6.1f} s")
    print("load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))


if __name__ == "__main__":
    main()
