"""cpuinfo.py — the CPU a figure was measured on, for the Python scripts of dev/: its model
name and its widest vector ISA, in the words `gkd bench` uses (cli/bench.h's describe_cpu)."""


def cpu_model_and_isa():
    model, flags = "unknown CPU", ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name") and model == "unknown CPU":
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = " " + line.split(":", 1)[1].strip() + " "
    isa = ("AVX-512 (avx512f)" if " avx512f " in flags else "AVX2 + FMA, no AVX-512" if " avx2 " in flags and " fma " in flags
           else "AVX, no AVX2" if " avx " in flags else "SSE only")
    return model, isa
