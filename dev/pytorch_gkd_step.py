#!/usr/bin/env python3
"""pytorch_gkd_step.py — the same on-policy GKD step as `./gkd bench`, in PyTorch eager,
written as a fair user would: a GPT-2 module, KV-cached batched sampling, the teacher
forward under no_grad, the student forward/backward, JSD(beta) over the real vocabulary,
AdamW. Prints per-phase milliseconds (median of --steps after --warmup) as JSON.

    /usr/bin/python3 dev/pytorch_gkd_step.py --threads 2          (the reference configuration)
    python3 dev/pytorch_gkd_step.py --device cuda [--tf32]       (on a GPU: fp32, or TF32 matmuls)

On the GPU every phase ends with torch.cuda.synchronize(), as gkd's phases end with
cudaDeviceSynchronize, and the peak allocated memory is reported.

Shapes default to the CPU performance issue's reference configuration: byte vocabulary
(V = 257), context 128; student 2 layers x 128 channels x 4 heads; teacher 4 x 256 x 4;
B = 32, 32-token prompts, 64 new tokens; lambda = 1, beta = 0.5.
"""
import argparse, ctypes, json, math, os, statistics, time
import torch
import torch.nn.functional as F

from cpuinfo import cpu_model_and_isa  # dev/cpuinfo.py, beside this script


class Block(torch.nn.Module):
    def __init__(self, C, NH):
        super().__init__()
        self.NH = NH
        self.ln1 = torch.nn.LayerNorm(C)
        self.qkv = torch.nn.Linear(C, 3 * C)
        self.proj = torch.nn.Linear(C, C)
        self.ln2 = torch.nn.LayerNorm(C)
        self.fc = torch.nn.Linear(C, 4 * C)
        self.fcproj = torch.nn.Linear(4 * C, C)

    def forward(self, x, cache=None, pos=0):
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=-1)
        q, k, v = (t.view(B, T, self.NH, C // self.NH).transpose(1, 2) for t in (q, k, v))
        if cache is not None:  # KV cache: (B, NH, maxT, hs) each, filled up to pos
            cache[0][:, :, pos:pos + T] = k
            cache[1][:, :, pos:pos + T] = v
            k, v = cache[0][:, :, :pos + T], cache[1][:, :, :pos + T]
        y = F.scaled_dot_product_attention(q, k, v, is_causal=(T > 1)) if hasattr(F, "scaled_dot_product_attention") \
            else self._attention(q, k, v, T > 1)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.fcproj(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))

    @staticmethod
    def _attention(q, k, v, causal):
        att = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
        if causal:
            T, S = q.shape[-2], k.shape[-2]
            att = att.masked_fill(torch.ones(T, S, dtype=torch.bool).triu(S - T + 1), float("-inf"))
        return att.softmax(-1) @ v


class GPT(torch.nn.Module):
    def __init__(self, L, C, NH, V, maxT):
        super().__init__()
        self.V, self.maxT, self.C, self.NH = V, maxT, C, NH
        self.wte = torch.nn.Embedding(V, C)
        self.wpe = torch.nn.Embedding(maxT, C)
        self.blocks = torch.nn.ModuleList(Block(C, NH) for _ in range(L))
        self.lnf = torch.nn.LayerNorm(C)
        for p in self.parameters():
            torch.nn.init.normal_(p, std=0.02) if p.dim() > 1 else None

    def forward(self, idx, caches=None, pos=0):
        T = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(pos, pos + T, device=idx.device))
        for i, b in enumerate(self.blocks):
            x = b(x, caches[i] if caches else None, pos)
        return self.lnf(x) @ self.wte.weight.T  # tied head, (B, T, V)

    @torch.no_grad()
    def sample(self, prompts, new_tokens, eos, gen):
        B, P = prompts.shape
        hs = self.C // self.NH
        dev = prompts.device
        caches = [(torch.empty(B, self.NH, self.maxT, hs, device=dev), torch.empty(B, self.NH, self.maxT, hs, device=dev))
                  for _ in self.blocks]
        logits = self(prompts, caches, 0)[:, -1]
        out = torch.empty(B, new_tokens, dtype=torch.long, device=dev)
        done = torch.zeros(B, dtype=torch.bool, device=dev)
        for t in range(new_tokens):
            tok = torch.multinomial(logits.softmax(-1), 1, generator=gen).squeeze(1)
            tok = torch.where(done, torch.full_like(tok, eos), tok)
            out[:, t] = tok
            done |= tok == eos
            if t + 1 < new_tokens:
                logits = self(tok[:, None], caches, P + t)[:, -1]
        return out


def jsd(teacher_logits, student_logits, beta):
    p = teacher_logits.log_softmax(-1)
    q = student_logits.log_softmax(-1)
    m = torch.logsumexp(torch.stack([p + math.log(beta), q + math.log(1 - beta)]), 0)
    return beta * (p.exp() * (p - m)).sum(-1) + (1 - beta) * (q.exp() * (q - m)).sum(-1)


def cpu_blas_report():
    """What a CPU figure depends on, measured in this process: the CPU and its vector ISA,
    the BLAS PyTorch was built against (torch.__config__), the BLAS library actually
    loaded (after a matmul, from /proc/self/maps), and torch.mm's 1024^3 rate (best of
    three ~0.1 s windows, as gkd bench measures its own ceiling)."""
    model, isa = cpu_model_and_isa()
    config = torch.__config__.show()
    blas_info = next((p.split("=", 1)[1] for p in config.replace(",", " ").split() if p.startswith("BLAS_INFO=")), "?")
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    torch.mm(a, b)
    best = 0.0
    for _ in range(3):
        reps, t0 = 0, time.perf_counter()
        while True:
            torch.mm(a, b)
            reps += 1
            el = time.perf_counter() - t0
            if reps >= 2 and el >= 0.1:
                break
        best = max(best, 2.0 * 1024**3 * reps / el / 1e9)
    with open("/proc/self/maps") as f:
        libs = sorted({l.split()[-1] for l in f if "blas" in l.lower() and "/" in l})
    # the vector ISA PyTorch's own kernels dispatch to (ATen's CPU capability), and, when the
    # BLAS loaded is OpenBLAS, the kernels it chose (OPENBLAS_CORETYPE forces them)
    capability = next((l.split(":", 1)[1].strip() for l in config.splitlines() if "CPU capability usage" in l), "?")
    corename = "?"
    for lib in libs:
        try:
            fn = ctypes.CDLL(lib).openblas_get_corename
            fn.restype = ctypes.c_char_p
            corename = fn().decode()
            break
        except (OSError, AttributeError):
            pass
    forced = os.environ.get("OPENBLAS_CORETYPE", "")
    return dict(cpu=model, vector_isa=isa, blas_info=blas_info, blas_loaded=[os.path.realpath(p) for p in libs] or ["none"],
                blas_kernels=corename + (f", forced by OPENBLAS_CORETYPE={forced}" if forced else ""),
                cpu_capability=capability, sgemm_gflops=round(best, 1), mkldnn=torch.backends.mkldnn.is_available())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--student", default="2,128,4")
    ap.add_argument("--teacher", default="4,256,4")
    ap.add_argument("--vocab", type=int, default=257)
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--beta", type=float, default=0.5)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--tf32", action="store_true", help="cuda: TF32 matmuls")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dev = torch.device(a.device)
    cuda = a.device == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = a.tf32
        torch.backends.cudnn.allow_tf32 = a.tf32
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    student = GPT(*map(int, a.student.split(",")), a.vocab, a.context).to(dev)
    teacher = GPT(*map(int, a.teacher.split(",")), a.vocab, a.context).to(dev).requires_grad_(False)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4, weight_decay=0.0)
    gen = torch.Generator().manual_seed(0)  # prompts, on the host
    sample_gen = torch.Generator(device=dev).manual_seed(0)
    eos = a.vocab - 1
    times = {k: [] for k in ("sample", "teacher", "student_forward", "loss", "backward", "update", "step")}
    for step in range(a.warmup + a.steps):
        prompts = torch.randint(0, a.vocab - 1, (a.batch, a.prompt_len), generator=gen).to(dev)
        sync()
        t0 = time.perf_counter()
        completion = student.sample(prompts, a.new_tokens, eos, sample_gen)
        sync()
        t1 = time.perf_counter()
        rows = torch.cat([prompts, completion], 1)
        inputs, targets_from = rows[:, :-1], a.prompt_len - 1
        # targets: completion tokens up to and including the first EOS
        after_eos = (completion == eos).long().cumsum(1) - (completion == eos).long() > 0
        mask = ~after_eos
        with torch.no_grad():
            tl = teacher(inputs)[:, targets_from:]
        sync()
        t2 = time.perf_counter()
        sl = student(inputs)[:, targets_from:]
        sync()
        t3 = time.perf_counter()
        per_token = jsd(tl, sl, a.beta)
        loss = ((per_token * mask).sum(1) / mask.sum(1).clamp(min=1)).mean()  # the paper's 1/L_y
        sync()
        t4 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        sync()
        t5 = time.perf_counter()
        opt.step()
        sync()
        t6 = time.perf_counter()
        if step >= a.warmup:
            for k, v in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5, t6 - t0)):
                times[k].append(1000 * v)
    out = {k + "_ms": round(statistics.median(v), 2) for k, v in times.items()}
    out.update(threads=a.threads, torch=torch.__version__, batch=a.batch, new_tokens=a.new_tokens, device=a.device)
    if not cuda:
        out.update(cpu_blas_report())
    if cuda:
        out.update(gpu=torch.cuda.get_device_name(), tf32=a.tf32,
                   peak_device_memory_mb=round(torch.cuda.max_memory_allocated() / 2**20, 1))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
