// data/tasks.h — the built-in tasks of the default experiment, generated from a seed,
// and their scores.
//
//   arithmetic  "3+5+9+2+7=" -> "8;17;19;26": the running sums (the worked steps), the
//               last of which is the answer. Like GSM8K: the model conditions on its own
//               intermediate results, so an early slip compounds, which is where training
//               on the student's own samples should help. Scored by exact match of the
//               final answer (the text after the last ';').
//   words       "4721:" -> "four thousand seven hundred twenty-one": numbers to English,
//               a transduction task like translation. Scored by exact match and by a
//               character-level similarity, 1 - Levenshtein distance / longer length.
//   repair      "b/acfgj:" -> "plhobdlb": a chain of 8 letters on walks' graph that avoids 5
//               letters, where the undo token '<' repairs a slip ("plhd<obdlb" is right):
//               built for on-policy distillation's four conditions (see its section below).
//   walks       "c/hkm:" -> "bpfgloh": a walk of 7 steps on a fixed directed graph over the
//               letters a-p (each letter has 3 successors), from the start letter c, that
//               never visits a letter twice nor one of the avoided letters h, k, m. A
//               prompt has 80 valid walks on average (a stochastic teacher: many good
//               outputs), the training split holds 3 of them per prompt, and validity
//               depends on the whole prefix (which letters were used), so a small student
//               slips; a slip (a repeated letter, a missing edge) leads to a prefix that
//               the data never shows. Scored by a checker, not by the reference: correct
//               when the whole walk is valid; similarity is the fraction of the 7 steps
//               that are valid given everything before them, so continuing well after a
//               slip still earns credit.
//
// Splits never overlap: all distinct prompts are drawn first (without replacement, from
// the seed), then cut into test, validation and train, in that order.
#pragma once

#include <algorithm>
#include <set>
#include <string>
#include <vector>

#include "../utils.h"

struct TaskExample {
    std::string prompt, completion;
};

struct TaskSplits {
    std::vector<TaskExample> train, validation, test;
};

static const char* const TASK_NAMES[] = {"arithmetic", "words", "walks", "repair"};

inline bool is_task(const std::string& name) {
    return name == "arithmetic" || name == "words" || name == "walks" || name == "repair";
}
// Tasks an evaluation can score by: the built-in ones, and GSM8K (data/convert.h's lines).
inline const std::vector<std::string> SCORED_TASKS = {"arithmetic", "words", "walks", "repair", "gsm8k"};
inline bool is_scored_task(const std::string& name) {
    return std::find(SCORED_TASKS.begin(), SCORED_TASKS.end(), name) != SCORED_TASKS.end();
}

// --- arithmetic

inline TaskExample arithmetic_example(const std::vector<int>& operands) {
    TaskExample ex;
    int sum = operands[0];
    ex.prompt = std::to_string(operands[0]);
    for (size_t i = 1; i < operands.size(); i++) {
        ex.prompt += "+" + std::to_string(operands[i]);
        sum += operands[i];
        ex.completion += (i > 1 ? ";" : "") + std::to_string(sum);
    }
    ex.prompt += "=";
    return ex;
}

// --- words

inline std::string number_to_words(int n) {
    static const char* ones[] = {"zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
                                 "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen",
                                 "seventeen", "eighteen", "nineteen"};
    static const char* tens[] = {"", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"};
    GKD_ASSERT(n >= 0 && n < 1000000, "number out of the words task's range");
    auto below_thousand = [&](int x) {
        std::string s;
        if (x >= 100) { s = std::string(ones[x / 100]) + " hundred"; x %= 100; if (x) s += " "; }
        if (x >= 20) { s += tens[x / 10]; if (x % 10) s += std::string("-") + ones[x % 10]; }
        else if (x > 0 || s.empty()) s += ones[x];
        return s;
    };
    if (n < 1000) return below_thousand(n);
    std::string s = below_thousand(n / 1000) + " thousand";
    if (n % 1000) s += " " + below_thousand(n % 1000);
    return s;
}

// --- walks

constexpr int WALK_LETTERS = 16, WALK_SUCCESSORS = 3, WALK_STEPS = 7, WALK_AVOIDED = 3;

// The task's graph: letter i's successors, WALK_SUCCESSORS distinct letters other than i.
// Fixed (its own seed, not the data's): the graph is part of the task's definition.
inline const std::vector<std::vector<int>>& walk_graph() {
    static const std::vector<std::vector<int>> graph = [] {
        Rng rng(derive_seed(0x3a1c5, 0xd15ea5e));
        std::vector<std::vector<int>> g(WALK_LETTERS);
        for (int i = 0; i < WALK_LETTERS; i++) {
            std::vector<int> others;
            for (int j = 0; j < WALK_LETTERS; j++)
                if (j != i) others.push_back(j);
            for (int k = 0; k < WALK_SUCCESSORS; k++) {  // a partial Fisher-Yates shuffle
                std::swap(others[k], others[k + rng.below(others.size() - k)]);
                g[i].push_back(others[k]);
            }
        }
        return g;
    }();
    return graph;
}

// A letter of the walks' alphabet as its index, or -1 for any other character.
inline int walk_letter(char c) { return c >= 'a' && c < 'a' + WALK_LETTERS ? c - 'a' : -1; }
// Whether the graph has the edge x -> y.
inline bool walk_edge(int x, int y) {
    const std::vector<int>& succ = walk_graph()[x];
    return std::find(succ.begin(), succ.end(), y) != succ.end();
}
// A uniform seeded shuffle of v (Fisher-Yates, from the last element down).
template <class T>
inline void seeded_shuffle(std::vector<T>& v, Rng& rng) {
    for (size_t i = v.size(); i > 1; i--) std::swap(v[i - 1], v[rng.below(i)]);
}

// The prompt "s/abc:" (start s, avoided a, b, c) as a start and a used-letters mask;
// false when the text is not such a prompt.
inline bool parse_walk_prompt(const std::string& prompt, int& start, unsigned& used) {
    const size_t n = prompt.size();
    if (n != 3 + WALK_AVOIDED || prompt[1] != '/' || prompt[n - 1] != ':') return false;
    start = walk_letter(prompt[0]);
    if (start < 0) return false;
    used = 1u << start;
    for (size_t i = 2; i < n - 1; i++) {
        int a = walk_letter(prompt[i]);
        if (a < 0) return false;
        used |= 1u << a;
    }
    return true;
}

// Every valid walk of WALK_STEPS steps from `start` avoiding the letters in `used`.
inline void valid_walks(int at, unsigned used, std::string& path, std::vector<std::string>& out) {
    if ((int)path.size() == WALK_STEPS) { out.push_back(path); return; }
    for (int next : walk_graph()[at])
        if (!(used & (1u << next))) {
            path.push_back((char)('a' + next));
            valid_walks(next, used | (1u << next), path, out);
            path.pop_back();
        }
}

// The fraction of the WALK_STEPS steps of `walk` that are valid given everything before
// them (an edge from the previous letter, to a letter not seen yet); a missing step
// counts as invalid, and any extra text makes the walk not `complete`.
struct WalkScore {
    double valid_steps = 0;
    bool complete = false;  // every step valid, and nothing more
    int first_slip = 0;     // the index of the first invalid step (the end when it stops short), -1 for none
};
inline WalkScore score_walk(const std::string& prompt, const std::string& walk) {
    WalkScore s;
    int at;
    unsigned used;
    if (!parse_walk_prompt(prompt, at, used)) return s;
    int valid = 0;
    s.first_slip = -1;
    for (size_t k = 0; k < walk.size() && k < (size_t)WALK_STEPS; k++) {
        int next = walk_letter(walk[k]);
        if (next >= 0 && walk_edge(at, next) && !(used & (1u << next))) valid++;
        else if (s.first_slip < 0) s.first_slip = (int)k;
        if (next < 0) break;  // not a letter: the walk is over
        used |= 1u << next;
        at = next;
    }
    s.valid_steps = (double)valid / WALK_STEPS;
    s.complete = valid == WALK_STEPS && walk.size() == (size_t)WALK_STEPS;
    if (s.first_slip < 0 && !s.complete)  // too short (the end is the slip) or text past the walk
        s.first_slip = (int)std::min(walk.size(), (size_t)WALK_STEPS);
    return s;
}

// --- repair

// "b/acfgj:" -> "plhobdlb": a chain of REPAIR_STEPS letters on walks' graph, each a
// successor of the one before (the first, of the start b), never an avoided letter (a, c,
// f, g, j); letters may repeat. The undo token '<' deletes the letter before it, so a slip
// can be repaired: "plhd<obdlb" is as valid as "plhobdlb" (h -> d is no edge). A slip is a letter after which
// the prompt can no longer be satisfied: a missing edge, an avoided letter, a dead end
// (every way on leads to an avoided letter before the last step), or a ninth letter.
// The task is built for on-policy distillation's four conditions (docs/study.md, "The
// repair task"): a slip is recognisable from the last two letters and the prompt, the teacher
// has been shown how to undo one (repair_teacher_rows), and the data never holds one.
constexpr int REPAIR_STEPS = 8, REPAIR_AVOIDED = 5;
constexpr char UNDO = '<';

// The prompt "s/abcde:" as a start and an avoided-letters mask; false when it is not one.
inline bool parse_repair_prompt(const std::string& prompt, int& start, unsigned& avoided) {
    const size_t n = prompt.size();
    if (n != 3 + REPAIR_AVOIDED || prompt[1] != '/' || prompt[n - 1] != ':') return false;
    start = walk_letter(prompt[0]);
    if (start < 0) return false;
    avoided = 0;
    for (size_t i = 2; i < n - 1; i++) {
        int a = walk_letter(prompt[i]);
        if (a < 0 || a == start || (avoided & (1u << a))) return false;
        avoided |= 1u << a;
    }
    return true;
}

// ways[k][x]: the valid chains of k more letters from letter x (k = 0: the empty one).
struct RepairWays {
    std::vector<std::vector<double>> ways;
    explicit RepairWays(unsigned avoided) : ways(REPAIR_STEPS + 1, std::vector<double>(WALK_LETTERS, 0)) {
        for (int x = 0; x < WALK_LETTERS; x++) ways[0][x] = 1;
        for (int k = 1; k <= REPAIR_STEPS; k++)
            for (int x = 0; x < WALK_LETTERS; x++)
                for (int y : walk_graph()[x])
                    if (!(avoided & (1u << y))) ways[k][x] += ways[k - 1][y];
    }
    // whether letter y may come next after x with `done` letters already written
    bool extends(int x, int y, int done, unsigned avoided) const {
        if (done >= REPAIR_STEPS || y < 0 || y >= WALK_LETTERS || (avoided & (1u << y))) return false;
        return walk_edge(x, y) && ways[REPAIR_STEPS - done - 1][y] > 0;
    }
};

// Whether every letter a chain from `start` can reach has a successor not avoided: then
// no step is a dead end, and every slip is visible from the last two letters and the prompt.
inline bool repair_no_dead_ends(int start, unsigned avoided) {
    unsigned seen = 1u << start, frontier = seen;
    while (frontier) {
        unsigned next = 0;
        for (int x = 0; x < WALK_LETTERS; x++) {
            if (!(frontier & (1u << x))) continue;
            bool way_on = false;
            for (int y : walk_graph()[x])
                if (!(avoided & (1u << y))) { way_on = true; next |= 1u << y; }
            if (!way_on) return false;
        }
        frontier = next & ~seen;
        seen |= next;
    }
    return true;
}

// A completion read with its undos applied: the chain left, the index (in the text) of
// the first slip (-1 when there is none), the undos used.
struct RepairScore {
    double valid_steps = 0;  // the fraction of the REPAIR_STEPS steps of the final chain that are valid
    bool complete = false;   // the final chain is valid and whole, and nothing but letters and undos
    int first_slip = 0;      // a bad prompt: everything is invalid
    int undos = 0;
};
inline RepairScore score_repair(const std::string& prompt, const std::string& text) {
    RepairScore s;
    int start;
    unsigned avoided;
    if (!parse_repair_prompt(prompt, start, avoided)) return s;
    s.first_slip = -1;
    RepairWays w(avoided);
    std::vector<int> chain;
    bool clean = true;  // nothing but letters and undos
    for (size_t i = 0; i < text.size(); i++) {
        const char c = text[i];
        if (c == UNDO) {
            s.undos++;
            if (!chain.empty()) chain.pop_back();
            continue;
        }
        int y = walk_letter(c);
        if (y < 0) {
            clean = false;
            if (s.first_slip < 0) s.first_slip = (int)i;
            break;
        }
        if (s.first_slip < 0 && !w.extends(chain.empty() ? start : chain.back(), y, (int)chain.size(), avoided))
            s.first_slip = (int)i;
        chain.push_back(y);
    }
    // the final chain, step by step: an edge to a letter not avoided (dead ends count as
    // valid here: what is scored is the chain, not how it was written)
    int at = start, valid = 0;
    for (size_t k = 0; k < chain.size() && k < (size_t)REPAIR_STEPS; k++) {
        if (walk_edge(at, chain[k]) && !(avoided & (1u << chain[k]))) valid++;
        at = chain[k];
    }
    s.valid_steps = (double)valid / REPAIR_STEPS;
    s.complete = clean && valid == REPAIR_STEPS && chain.size() == (size_t)REPAIR_STEPS;
    if (s.first_slip < 0 && !s.complete) s.first_slip = (int)text.size();  // it stopped short: the end is the slip
    return s;
}

// A valid chain of `steps` more letters from x, uniform over all of them (the ways table).
inline std::string repair_chain(const RepairWays& w, int x, int steps, unsigned avoided, Rng& rng) {
    std::string out;
    for (int k = steps; k > 0; k--) {
        double r = rng.uniform() * w.ways[k][x];
        int next = -1;
        for (int y : walk_graph()[x]) {
            if (avoided & (1u << y)) continue;
            next = y;
            if ((r -= w.ways[k - 1][y]) < 0) break;
        }
        out.push_back((char)('a' + next));
        x = next;
    }
    return out;
}

// A letter that would be a slip after `written` (the chain so far, from `start`): one of
// the letters that do not extend it, drawn as a small student errs three times in four
// (an avoided successor; a successor of the letter before the last, or that letter
// itself; two steps at once) and uniformly otherwise. A teacher shown only uniform slips
// does not recognise a student's: those are the plausible ones.
inline char repair_slip(const RepairWays& w, int start, const std::string& written, unsigned avoided, Rng& rng) {
    const int done = (int)written.size(), x = done ? written.back() - 'a' : start;
    const int before = done >= 2 ? written[done - 2] - 'a' : done == 1 ? start : -1;
    std::vector<int> bad, plausible;
    for (int y = 0; y < WALK_LETTERS; y++)
        if (!w.extends(x, y, done, avoided)) bad.push_back(y);
    auto add = [&](int y) {
        if (std::find(bad.begin(), bad.end(), y) != bad.end()) plausible.push_back(y);
    };
    for (int y : walk_graph()[x]) {
        add(y);                                  // avoided (or a dead end)
        for (int z : walk_graph()[y]) add(z);    // two steps at once
    }
    if (before >= 0) {
        add(before);                             // back where it came from
        for (int y : walk_graph()[before]) add(y);  // the letter before the last taken for the last
    }
    const std::vector<int>& from = !plausible.empty() && rng.uniform() < 0.75 ? plausible : bad;
    return (char)('a' + from[rng.below(from.size())]);
}

// The training split with one slip per example inserted by hand and undone at once
// ("plhobdlb" -> "plhd<obdlb", the slip at a uniform step, drawn by repair_slip): the
// control that covers error states offline, knowing how a student errs.
inline std::vector<TaskExample> repair_with_slips(const std::vector<TaskExample>& train, uint64_t seed) {
    Rng rng(derive_seed(seed, 0x511b5));
    std::vector<TaskExample> out;
    for (const TaskExample& e : train) {
        int start;
        unsigned avoided;
        GKD_ASSERT(parse_repair_prompt(e.prompt, start, avoided), "not a repair prompt");
        RepairWays w(avoided);
        const int at = (int)rng.below(REPAIR_STEPS + 1);  // after `at` letters (REPAIR_STEPS: a ninth letter)
        const std::string head = e.completion.substr(0, at);
        std::string c = head + repair_slip(w, start, head, avoided, rng) + UNDO + e.completion.substr(at);
        out.push_back({e.prompt, c});
    }
    return out;
}

// What the teacher is trained on besides the clean split: recovery rows, whose prompt
// ends in a slip and whose completion undoes it and finishes a valid chain. The prompt's
// written part may hold earlier slips already undone, and now and then an undo of a
// letter that was fine, so that the teacher is right on the prefixes a student writes.
// The slip is in the prompt, never a target: the teacher learns to undo, not to slip.
inline std::vector<TaskExample> repair_teacher_rows(const std::vector<TaskExample>& train, size_t n, uint64_t seed) {
    Rng rng(derive_seed(seed, 0x7eac4e2));
    std::vector<TaskExample> out;
    for (size_t i = 0; i < n; i++) {
        const TaskExample& e = train[i % train.size()];
        int start;
        unsigned avoided;
        GKD_ASSERT(parse_repair_prompt(e.prompt, start, avoided), "not a repair prompt");
        RepairWays w(avoided);
        const int at = (int)rng.below(REPAIR_STEPS + 1);
        std::string written;
        int detours = 0;
        for (int k = 0; k < at; k++) {  // the chain's first `at` letters, with up to 2 undone detours
            const int x = k ? e.completion[k - 1] - 'a' : start;
            double u = detours < 2 ? rng.uniform() : 1.0;
            detours += u < 0.20;
            const std::string head = e.completion.substr(0, k);
            if (u < 0.15) written += std::string(1, repair_slip(w, start, head, avoided, rng)) + UNDO;
            else if (u < 0.20) written += std::string(1, (char)('a' + walk_graph()[x][rng.below(WALK_SUCCESSORS)])) + UNDO;
            written += e.completion[k];
        }
        written += repair_slip(w, start, e.completion.substr(0, at), avoided, rng);
        out.push_back({e.prompt + written, std::string(1, UNDO) + e.completion.substr(at)});
    }
    return out;
}

// --- generation

struct TaskSizes {
    int train = 20000, validation = 200, test = 500;
};

inline TaskSplits generate_task(const std::string& task, uint64_t seed, const TaskSizes& sizes) {
    Rng rng(derive_seed(seed, 0x7a5c));
    std::vector<TaskExample> all;
    std::set<std::string> seen;
    size_t want = (size_t)sizes.train + sizes.validation + sizes.test;
    if (task == "arithmetic") {
        // 5 operands in [0, 9]: 10^5 distinct prompts
        if (want > 50000) GKD_FAIL("the arithmetic task draws at most 50000 of its 100000 prompts; asked for %zu", want);
        while (all.size() < want) {
            std::vector<int> ops;
            for (int i = 0; i < 5; i++) ops.push_back((int)rng.below(10));
            TaskExample ex = arithmetic_example(ops);
            if (seen.insert(ex.prompt).second) all.push_back(ex);
        }
    } else if (task == "words") {
        // every number in [0, 10000) once, in a seeded order
        const int N = 10000;
        if (want > (size_t)N) GKD_FAIL("the words task has only %d distinct examples; asked for %zu", N, want);
        std::vector<int> numbers(N);
        for (int i = 0; i < N; i++) numbers[i] = i;
        seeded_shuffle(numbers, rng);
        for (size_t i = 0; i < want; i++) all.push_back({std::to_string(numbers[i]) + ":", number_to_words(numbers[i])});
    } else if (task == "walks") {
        // every prompt with at least one valid walk, in a seeded order: the first ones are
        // the test and validation prompts, one reference walk each; the training examples
        // cycle over the other prompts, each time with a walk drawn uniformly from the
        // prompt's valid ones (so each training prompt comes with several different walks)
        std::vector<std::pair<std::string, std::vector<std::string>>> prompts;
        for (int s = 0; s < WALK_LETTERS; s++)
            for (int a = 0; a < WALK_LETTERS; a++)
                for (int b = a + 1; b < WALK_LETTERS; b++)
                    for (int c = b + 1; c < WALK_LETTERS; c++) {
                        if (a == s || b == s || c == s) continue;
                        std::string prompt = {(char)('a' + s), '/', (char)('a' + a), (char)('a' + b), (char)('a' + c), ':'};
                        std::vector<std::string> walks;
                        std::string path;
                        valid_walks(s, (1u << s) | (1u << a) | (1u << b) | (1u << c), path, walks);
                        if (!walks.empty()) prompts.push_back({prompt, std::move(walks)});
                    }
        seeded_shuffle(prompts, rng);
        const size_t held_out = (size_t)sizes.test + sizes.validation;
        if (held_out >= prompts.size())
            GKD_FAIL("the walks task has %zu prompts; %zu held out leave none for training", prompts.size(), held_out);
        for (size_t i = 0; i < held_out; i++)
            all.push_back({prompts[i].first, prompts[i].second[rng.below(prompts[i].second.size())]});
        for (size_t i = 0; i < (size_t)sizes.train; i++) {
            auto& [prompt, walks] = prompts[held_out + i % (prompts.size() - held_out)];
            all.push_back({prompt, walks[rng.below(walks.size())]});
        }
        for (size_t i = all.size() - 1; i > held_out; i--)  // the training examples in a seeded order
            std::swap(all[i], all[held_out + rng.below(i - held_out + 1)]);
    } else if (task == "repair") {
        // every prompt (a start, 5 avoided letters) with a valid chain, in a seeded order,
        // cut as walks' are; each chain drawn uniformly from the prompt's valid ones
        std::vector<std::pair<std::string, unsigned>> prompts;
        for (int s = 0; s < WALK_LETTERS; s++)
            for (unsigned mask = 0; mask < (1u << WALK_LETTERS); mask++) {
                if ((mask & (1u << s)) || __builtin_popcount(mask) != REPAIR_AVOIDED) continue;
                if (!repair_no_dead_ends(s, mask)) continue;
                std::string prompt = {(char)('a' + s), '/'};
                for (int a = 0; a < WALK_LETTERS; a++)
                    if (mask & (1u << a)) prompt += (char)('a' + a);
                prompts.push_back({prompt + ":", mask});
            }
        seeded_shuffle(prompts, rng);
        const size_t held_out = (size_t)sizes.test + sizes.validation;
        if (held_out >= prompts.size())
            GKD_FAIL("the repair task has %zu prompts; %zu held out leave none for training", prompts.size(), held_out);
        auto example = [&](size_t i) {
            const auto& [prompt, mask] = prompts[i];
            return TaskExample{prompt, repair_chain(RepairWays(mask), prompt[0] - 'a', REPAIR_STEPS, mask, rng)};
        };
        for (size_t i = 0; i < held_out; i++) all.push_back(example(i));
        for (size_t i = 0; i < (size_t)sizes.train; i++) all.push_back(example(held_out + i % (prompts.size() - held_out)));
    } else {
        GKD_FAIL("unknown task '%s' (arithmetic, words, walks or repair)", task.c_str());
    }
    TaskSplits s;
    s.test.assign(all.begin(), all.begin() + sizes.test);
    s.validation.assign(all.begin() + sizes.test, all.begin() + sizes.test + sizes.validation);
    s.train.assign(all.begin() + sizes.test + sizes.validation, all.end());
    return s;
}

// --- scores

// The final answer of an arithmetic completion: the text after the last ';'.
inline std::string final_answer(const std::string& completion) {
    size_t k = completion.rfind(';');
    return k == std::string::npos ? completion : completion.substr(k + 1);
}

inline size_t levenshtein(const std::string& a, const std::string& b) {
    std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
    for (size_t j = 0; j <= b.size(); j++) prev[j] = j;
    for (size_t i = 1; i <= a.size(); i++) {
        cur[0] = i;
        for (size_t j = 1; j <= b.size(); j++)
            cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1])});
        std::swap(prev, cur);
    }
    return prev[b.size()];
}

// 1 - edit distance / longer length: 1 for identical strings, 0 for nothing in common.
inline double char_similarity(const std::string& got, const std::string& want) {
    size_t longer = std::max(got.size(), want.size());
    return longer == 0 ? 1.0 : 1.0 - (double)levenshtein(got, want) / longer;
}

// GSM8K's final answer: the number after the last "####", without spaces or thousands
// commas ("#### 1,234" -> "1234"); "" when there is no "####".
inline std::string gsm8k_answer(const std::string& completion) {
    size_t k = completion.rfind("####");
    if (k == std::string::npos) return "";
    std::string out;
    for (size_t i = k + 4; i < completion.size() && completion[i] != '\n'; i++)
        if (completion[i] != ' ' && completion[i] != ',' && completion[i] != '\t') out += completion[i];
    return out;
}

struct TaskScore {
    double correct = 0;     // arithmetic: final answer right; words: exact match
    double similarity = 0;  // character similarity of the whole completion
    // The index in the completion's text of its first invalid step, for the on-policy gap
    // (gkd eval --teacher): the tokens after it condition on a prefix the data never shows.
    // -1: the completion has none; -2: the task cannot tell (GSM8K). Walks and repair are
    // checked against the prompt by their checkers; arithmetic and words have one right
    // output, so their first slip is the first character that differs from the reference.
    int first_slip = -2;
};

// `got` is the generated completion text (without EOS), `want` the reference, `prompt`
// the example's prompt (walks are checked against it, not against the reference).
inline TaskScore score_completion(const std::string& task, const std::string& prompt, const std::string& got,
                                  const std::string& want) {
    TaskScore s;
    if (task == "walks") {
        WalkScore w = score_walk(prompt, got);
        s.correct = w.complete;
        s.similarity = w.valid_steps;
        s.first_slip = w.first_slip;
        return s;
    }
    if (task == "repair") {
        RepairScore r = score_repair(prompt, got);
        s.correct = r.complete;
        s.similarity = r.valid_steps;
        s.first_slip = r.first_slip;
        return s;
    }
    if (task == "arithmetic") s.correct = final_answer(got) == final_answer(want);
    else if (task == "gsm8k") s.correct = !gsm8k_answer(want).empty() && gsm8k_answer(got) == gsm8k_answer(want);
    else s.correct = got == want;
    s.similarity = char_similarity(got, want);
    if (task == "arithmetic" || task == "words") {
        size_t k = 0;
        while (k < got.size() && k < want.size() && got[k] == want[k]) k++;
        s.first_slip = got == want ? -1 : (int)k;
    }
    return s;
}

// --- rewards, for RL fine-tuning with GKD as the regulariser (--reward NAME)
//
// A reward scores a sampled completion against the example's reference completion, in
// [0, 1]; 1 counts as correct. To add one: write a function below and add its row to
// REWARDS. Nothing else needs to change.

inline double reward_arithmetic(const std::string& got, const std::string& want) {
    return final_answer(got) == final_answer(want) ? 1.0 : 0.0;
}
inline double reward_gsm8k(const std::string& got, const std::string& want) {
    return !gsm8k_answer(want).empty() && gsm8k_answer(got) == gsm8k_answer(want) ? 1.0 : 0.0;
}
inline double reward_exact_match(const std::string& got, const std::string& want) { return got == want ? 1.0 : 0.0; }
inline double reward_similarity(const std::string& got, const std::string& want) { return char_similarity(got, want); }

struct Reward {
    const char* name;
    const char* help;
    double (*score)(const std::string& completion, const std::string& reference);
};

inline const Reward REWARDS[] = {
    {"arithmetic", "1 when the final answer (after the last ';') is right, else 0", reward_arithmetic},
    {"similarity", "character similarity to the reference, 1 - edit distance / length (the words task)", reward_similarity},
    {"gsm8k", "1 when the number after \"####\" equals the reference's (GSM8K), else 0", reward_gsm8k},
    {"exact-match", "1 when the completion equals the reference, else 0", reward_exact_match},
};

inline const Reward& find_reward(const std::string& name) {
    std::string names;
    for (const Reward& r : REWARDS) {
        if (name == r.name) return r;
        names += (names.empty() ? "" : ", ") + std::string(r.name);
    }
    GKD_FAIL("--reward '%s' is not a reward; the rewards are %s", name.c_str(), names.c_str());
}
