#!/usr/bin/env python3
"""emulator/prepare_sources.py — the emulated build's copy of gkd's sources.

g++ compiles the CUDA path against the emulator from a copy of the sources in which three
CUDA constructs that plain C++ cannot express are rewritten, each line for line (every
other file is copied as it is, so __FILE__ and __LINE__ name the original file and line):

  __shared__ T a[N], b[M];   ->  static thread_local T a[N], b[M]; emu::shared_declared(a, ...); ...
      one block runs at a time on each OS thread, so thread_local is the block's shared
      memory; shared_declared poisons it when the block's first thread gets there
  extern __shared__ T a[];   ->  T* a = (T*)emu::dynamic_shared();
      the launch's dynamic shared memory
  __launch_bounds__(N, ...)  ->  removed, and EMU_LAUNCH_BOUNDS(kernel, N) after the
      kernel's closing brace, so the emulator refuses a launch of more than N threads

Any other use of __shared__, or a <<<...>>> launch outside the nvcc branch of an
`#ifdef GKD_CUDA_EMULATOR` (the code launches through GPU_LAUNCH),
stops the build with the file and line: the emulator never guesses.

usage: prepare_sources.py SOURCE_ROOT OUT_DIR FILE...
"""
import os
import re
import sys

SHARED = re.compile(r'^(\s*)__shared__\s+([A-Za-z_][\w:<>]*)\s+([^;]+);(.*)$')
EXTERN_SHARED = re.compile(r'^(\s*)extern\s+__shared__\s+([A-Za-z_][\w:<>]*)\s+(\w+)\s*\[\s*\]\s*;(.*)$')
BOUNDS = re.compile(r'__launch_bounds__\s*\(([^,()]+)(?:,[^()]*)?\)\s*(\w+)\s*\(')
DECLARATOR = re.compile(r'^\s*(\w+)\s*\[[^\]]+\]\s*$')


def fail(path, number, why):
    sys.exit(f"{path}:{number}: emulator/prepare_sources.py: {why}")


def rewrite(path, text):
    lines = text.split('\n')
    pending = None  # (kernel, bound, brace depth before its body) until its closing brace
    depth = 0
    nvcc_only = None  # inside `#ifdef GKD_CUDA_EMULATOR ... #else` (the nvcc branch): None, 'emu', 'nvcc'
    out = []
    for number, line in enumerate(lines, 1):
        code = line.split('//')[0]
        directive = code.strip()
        if directive.startswith('#ifdef GKD_CUDA_EMULATOR'):
            nvcc_only = 'emu'
        elif directive.startswith('#else') and nvcc_only == 'emu':
            nvcc_only = 'nvcc'
        elif directive.startswith('#endif') and nvcc_only:
            nvcc_only = None
        if '<<<' in code and nvcc_only != 'nvcc':
            fail(path, number, "a <<<...>>> launch: launch kernels with GPU_LAUNCH (cuda/common.cuh)")
        m = EXTERN_SHARED.match(line)
        if m:
            indent, type_, name, rest = m.groups()
            line = f"{indent}{type_}* {name} = ({type_}*)::emu::dynamic_shared();{rest}"
        elif '__shared__' in code:
            m = SHARED.match(line)
            if not m:
                fail(path, number, "a __shared__ declaration this script does not know how to rewrite")
            indent, type_, declarators, rest = m.groups()
            names = []
            for d in declarators.split(','):
                dm = DECLARATOR.match(d)
                if not dm:
                    fail(path, number, f"__shared__ '{d.strip()}': only arrays with a size are rewritten")
                names.append(dm.group(1))
            poison = ' '.join(f"::emu::shared_declared({n}, sizeof {n});" for n in names)
            line = f"{indent}static thread_local {type_} {declarators}; {poison}{rest}"
        m = BOUNDS.search(line)
        if m:
            bound, kernel = m.group(1).strip(), m.group(2)
            line = line[:m.start()] + kernel + '(' + line[m.end():]
            pending = (kernel, bound, depth)
        # braces, to find the end of a kernel with launch bounds
        for ch in line.split('//')[0]:
            if ch == '{':
                depth += 1
            elif ch == '}':
                depth -= 1
                if pending and depth == pending[2]:
                    line = line + f" EMU_LAUNCH_BOUNDS({pending[0]}, {pending[1]})"
                    pending = None
        out.append(line)
    if pending:
        fail(path, len(lines), f"the end of kernel {pending[0]} was not found")
    return '\n'.join(out)


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    root, dest, files = sys.argv[1], sys.argv[2], sys.argv[3:]
    for f in files:
        src = os.path.join(root, f)
        with open(src, encoding='utf-8') as fh:
            text = fh.read()
        if f.endswith(('.cuh', '.cu')):
            text = rewrite(f, text)
        target = os.path.join(dest, f)
        os.makedirs(os.path.dirname(target) or '.', exist_ok=True)
        old = None
        if os.path.exists(target):
            with open(target, encoding='utf-8') as fh:
                old = fh.read()
        if old != text:  # untouched files keep their times: make rebuilds only what changed
            with open(target, 'w', encoding='utf-8') as fh:
                fh.write(text)


if __name__ == '__main__':
    main()
