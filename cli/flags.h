// cli/flags.h — gkd's flag parser: one table of flags per command, help generated from
// it, and one clear line for every mistake (the flag, the command, and what to do).
//
// A flag that belongs to another command is refused with that command's name (`gkd sft
// --lambda 0.5`: --lambda is a flag of gkd distill), so no flag is ever silently ignored.
// The tables themselves are with their commands (cli/commands.h, cli/bench.h); each
// command's --help prints its table.
//
// Part of gkd.cu's single translation unit.
#pragma once
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

struct FlagSpec {
    const char* name;
    bool takes_value;
    const char* help;
};

// The commands whose tables hold --name, e.g. "distill" (cli/commands.h); empty if none.
static std::string commands_with_flag(const std::string& name);

// Parses "--name value" and "--switch"; rejects unknown flags, missing values, repeats.
struct Flags {
    std::string command;
    std::map<std::string, std::string> values;
    std::set<std::string> switches;

    Flags(const std::string& cmd, int argc, char** argv, const std::vector<FlagSpec>& specs) : command(cmd) {
        for (int i = 0; i < argc; i++) {
            std::string a = argv[i];
            if (a.rfind("--", 0) != 0 || a.size() == 2)
                GKD_FAIL("gkd %s: unexpected argument '%s' (flags are --name value; see gkd %s --help)", cmd.c_str(),
                         a.c_str(), cmd.c_str());
            std::string name = a.substr(2);
            auto spec = std::find_if(specs.begin(), specs.end(), [&](const FlagSpec& s) { return name == s.name; });
            if (spec == specs.end()) {
                std::string owners = commands_with_flag(name);
                if (!owners.empty())
                    GKD_FAIL("gkd %s: --%s does not apply to %s (it is a flag of gkd %s; see gkd %s --help)",
                             cmd.c_str(), name.c_str(), cmd.c_str(), owners.c_str(), cmd.c_str());
                GKD_FAIL("gkd %s: unknown flag --%s (see gkd %s --help)", cmd.c_str(), name.c_str(), cmd.c_str());
            }
            if (values.count(name) || switches.count(name))
                GKD_FAIL("gkd %s: --%s is given twice", cmd.c_str(), name.c_str());
            if (!spec->takes_value) { switches.insert(name); continue; }
            if (i + 1 >= argc) GKD_FAIL("gkd %s: --%s needs a value", cmd.c_str(), name.c_str());
            values[name] = argv[++i];
        }
    }
    bool has(const std::string& n) const { return values.count(n) > 0; }
    bool on(const std::string& n) const { return switches.count(n) > 0; }
    // given at all: with a value, or as a switch
    bool given(const std::string& n) const { return has(n) || on(n); }
    std::vector<std::string> given_names() const {
        std::vector<std::string> names;
        for (const auto& [name, value] : values) names.push_back(name);
        names.insert(names.end(), switches.begin(), switches.end());
        return names;
    }
    std::string str(const std::string& n, const std::string& def = "") const {
        auto it = values.find(n);
        return it == values.end() ? def : it->second;
    }
    std::string required(const std::string& n) const {
        if (!has(n)) GKD_FAIL("gkd %s: --%s is required (see gkd %s --help)", command.c_str(), n.c_str(), command.c_str());
        return values.at(n);
    }
    double num(const std::string& n, double def, double lo, double hi) const {
        if (!has(n)) return def;
        const std::string& s = values.at(n);
        char* end = nullptr;
        errno = 0;
        double v = strtod(s.c_str(), &end);
        if (s.empty() || *end != '\0' || errno == ERANGE || !std::isfinite(v))
            GKD_FAIL("gkd %s: --%s '%s' is not a number", command.c_str(), n.c_str(), s.c_str());
        if (v < lo || v > hi)
            GKD_FAIL("gkd %s: --%s %s is outside [%g, %g]", command.c_str(), n.c_str(), s.c_str(), lo, hi);
        return v;
    }
    long long integer(const std::string& n, long long def, long long lo, long long hi) const {
        if (!has(n)) return def;
        const std::string& s = values.at(n);
        char* end = nullptr;
        errno = 0;
        long long v = strtoll(s.c_str(), &end, 10);
        if (s.empty() || *end != '\0' || errno == ERANGE)
            GKD_FAIL("gkd %s: --%s '%s' is not an integer", command.c_str(), n.c_str(), s.c_str());
        if (v < lo || v > hi)
            GKD_FAIL("gkd %s: --%s %s is outside [%lld, %lld]", command.c_str(), n.c_str(), s.c_str(), lo, hi);
        return v;
    }
    std::string choice(const std::string& n, const std::string& def, const std::vector<std::string>& allowed) const {
        std::string v = str(n, def);
        if (std::find(allowed.begin(), allowed.end(), v) == allowed.end()) {
            std::string list;
            for (auto& a : allowed) list += (list.empty() ? "" : "|") + a;
            GKD_FAIL("gkd %s: --%s '%s' must be one of %s", command.c_str(), n.c_str(), v.c_str(), list.c_str());
        }
        return v;
    }
};

static bool wants_help(int argc, char** argv) {
    for (int i = 0; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) return true;
    return false;
}

static void print_help(const std::string& usage, const std::vector<FlagSpec>& specs) {
    printf("%s\n\nflags:\n", usage.c_str());
    for (auto& s : specs) printf("  --%-20s %s\n", (std::string(s.name) + (s.takes_value ? " X" : "")).c_str(), s.help);
}

// A command's flags; nothing when it was asked for --help, which prints its usage line and
// its table instead.
static std::optional<Flags> command_flags(const std::string& command, const std::vector<FlagSpec>& specs, int argc,
                                          char** argv, const std::string& usage) {
    if (wants_help(argc, argv)) {
        print_help(usage, specs);
        return std::nullopt;
    }
    return Flags(command, argc, argv, specs);
}

// --task, one of SCORED_TASKS (data/tasks.h), or "" when not given
static std::string task_flag(const Flags& f) { return f.has("task") ? f.choice("task", "", SCORED_TASKS) : ""; }

// --precision auto | bf16 | fp32, for `device` (resolve_device's): bf16 is the CUDA path's
// (the CPU is fp32), and --tf32 is fp32's tensor-core mode.
static std::string precision_flag(const Flags& f, const std::string& device) {
    if (!f.has("precision")) return f.on("tf32") ? "fp32" : "auto";
    const std::string p = f.choice("precision", "auto", {"auto", "bf16", "fp32"});
    if (p == "bf16" && device != "cuda")
        GKD_FAIL("gkd %s: --precision bf16 is the CUDA path's: it needs --device cuda (the CPU computes in fp32)",
                 f.command.c_str());
    if (p == "bf16" && f.on("tf32"))
        GKD_FAIL("gkd %s: --tf32 is fp32's tensor-core mode; with --precision bf16 the matmuls are on the tensor "
                 "cores already: give one of them", f.command.c_str());
    return p;
}

// --device auto | cpu | cuda, resolved to where the work runs: auto is the GPU when this
// build has the CUDA path and a GPU is visible, else the CPU. cuda without one is an error.
static std::string resolve_device(const Flags& f) {
    std::string d = f.choice("device", "auto", {"auto", "cpu", "cuda"});
    if (d == "cuda" && !BUILD_HAS_CUDA)
        GKD_FAIL("gkd %s: --device cuda: this build has no CUDA path (nvcc was not found by make); use --device cpu "
                 "(or auto)", f.command.c_str());
    if (d == "cuda" && gpu_count() == 0)
        GKD_FAIL("gkd %s: --device cuda: no CUDA GPU is visible (nvidia-smi lists none); use --device cpu (or auto)",
                 f.command.c_str());
    if (d == "auto") d = gpu_count() > 0 ? "cuda" : "cpu";
    if (f.on("tf32") && d != "cuda") GKD_FAIL("gkd %s: --tf32 is a GPU mode: it needs --device cuda", f.command.c_str());
    precision_flag(f, d);  // refused here, before anything loads
    return d;
}


static const char* TOKENIZER_HELP =
    "byte, tokenizer.json, gpt2_tokenizer.bin, or a folder with vocab.json + merges.txt or encoder.json + vocab.bpe "
    "(default: byte for V = 257, else the tokenizer files beside the model)";

