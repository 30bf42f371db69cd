"""diagnose() against one plain forward+backward of the same batch, in the same process.

The model is the zoo's GPT with GPT-2's width and vocabulary (``n_embd=768``,
``vocab_size=50257``, tied embedding; 8 blocks, about 96 M parameters: the size at
which the issue measured 14 s against 8 s), on a batch of token ids. "forward+backward"
is what a training step does before the optimizer: ``model(x)``, then the gradients of
every parameter for a random unit-variance cotangent (diagnose's synthetic loss, drawn
inside the timing in both). Rounds alternate the two, so that a change of the host's
load hits both; the best of each is compared. Target: ratio <= 1.5.

    python benchmarks/bench_diagnose.py [--small] [--rounds 3] [--batch 4] [--seq 128] [--threads 0]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import _host  # benchmarks/ is the script's directory, first on sys.path


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--small", action="store_true", help="2 blocks of width 256, vocabulary 50257 (quick run)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds; the best of each is kept (default 3)")
    ap.add_argument("--batch", type=int, default=4, help="sequences per batch (default 4)")
    ap.add_argument("--seq", type=int, default=128, help="tokens per sequence (default 128)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default 0: torch's default)")
    args, _unknown = ap.parse_known_args(sys.argv[1:] if argv is None else argv)  # run_all passes its arguments

    import torch

    import torchinit
    from torchinit import zoo

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    cfg = dict(vocab_size=50257, block_size=1024, n_layer=8, n_embd=768, n_head=12, tie_weights=True)
    if args.small:
        cfg.update(n_layer=2, n_embd=256, n_head=4)
    torch.manual_seed(0)
    model = zoo.build("gpt", **cfg)
    torchinit.init_model(model, "gpt2", seed=0)
    x = torch.randint(0, cfg["vocab_size"], (args.batch, args.seq), generator=torch.Generator().manual_seed(0))
    params = [p for p in model.parameters() if p.requires_grad]
    n = sum(p.numel() for p in params)

    def forward_backward() -> None:
        y = model(x)
        y = y[0] if isinstance(y, tuple) else y
        cot = torch.randn(y.shape, generator=torch.Generator().manual_seed(0))
        torch.autograd.grad([y], params, grad_outputs=[cot])

    def diagnose() -> None:
        torchinit.diagnose(model, x)

    print(f"# {_cpu_name()}; torch {torch.__version__}, {torch.get_num_threads()} thread(s); "
          f"zoo gpt {cfg} ({n / 1e6:.1f} M parameters), batch {args.batch} x {args.seq} tokens", flush=True)
    checks = [_host.report("before")]
    forward_backward()  # warm-up: allocator, kernels
    diagnose()
    best = {"forward+backward": float("inf"), "diagnose": float("inf")}
    for _ in range(max(1, args.rounds)):
        for name, fn in (("forward+backward", forward_backward), ("diagnose", diagnose)):
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    checks.append(_host.report("after"))
    ratio = best["diagnose"] / best["forward+backward"]
    print(f"forward+backward  {best['forward+backward']:8.3f} s (best of {args.rounds})")
    print(f"diagnose          {best['diagnose']:8.3f} s (best of {args.rounds})")
    print(f"ratio diagnose / (forward+backward): {ratio:.2f}x (target <= 1.5x)")
    print(_host.verdict(checks))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
