#!/usr/bin/env python3
"""check_doc_links.py — every relative link of README.md, CONTRIBUTING.md, dev/README.md and
docs/*.md names a file of the repository and, with a #fragment, a heading of that page
(GitHub's anchors). tests/cli_test.sh runs it; it prints each broken link and exits 1 when there is one."""
import os, re, sys
bad = 0
os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
for root in ["README.md", "CONTRIBUTING.md", "dev/README.md"] + ["docs/" + f for f in os.listdir("docs") if f.endswith(".md")]:
    text = open(root).read()
    anchors_cache = {}
    for m in re.finditer(r"\]\(([^)\s]+)\)", text):
        link = m.group(1)
        if re.match(r"[a-z]+://", link): continue
        path, _, frag = link.partition("#")
        target = os.path.normpath(os.path.join(os.path.dirname(root), path)) if path else root
        if not os.path.exists(target):
            print(f"{root}: broken link {link}"); bad += 1; continue
        if frag and target.endswith(".md"):
            heads = [re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in re.findall(r"^#+ (.*)$", open(target).read(), re.M)]
            if frag not in heads:
                print(f"{root}: no heading #{frag} in {target}"); bad += 1
sys.exit(1 if bad else 0)
