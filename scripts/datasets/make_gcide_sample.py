#!/usr/bin/env python3
"""Build the small GCIDE prose slices committed under datasets/gcide/.

Input: gcide.dict.dz from the Debian package `dict-gcide` (0.48.5+nmu2),
obtained with:

    apt-get update && apt-get download dict-gcide
    dpkg -x dict-gcide_*.deb /tmp/gcide
    python3 scripts/datasets/make_gcide_sample.py \
        --dict /tmp/gcide/usr/share/dictd/gcide.dict.dz --out datasets/gcide

The dictzip file is gzip-readable. The script is deterministic (no
randomness): it parses every dictionary entry, keeps only the definition
prose (headword, pronunciation, etymology, quotations, citations, source tags
and markup stripped), and emits one line per sense of the form

    Headword: definition text.

It then picks evenly spaced lines for the training sample (~200 KB) and a
disjoint, also evenly spaced, set of lines for the eval slice (~20 KB).
"""
import argparse
import gzip
import os
import re

# An entry header: headword(s), then a pronunciation in backslashes.
HEADER_RE = re.compile(r"^([A-Za-z][A-Za-z' .,-]*?) \\[^\\]*\\")
SOURCE_TAG_RE = re.compile(r"\[(?:1913 Webster|WordNet[^\]]*|PJC|RDH|Webster 1913 Suppl\.|[A-Z]{2,4})\]")
BRACKET_RE = re.compile(r"\[[^\[\]]*\]")
PAREN_EMPTY_RE = re.compile(r"\(\s*\)")
CITATION_RE = re.compile(r"\s--\s*\S.*$")  # "--Author." citations and "-- {run-on}" forms
SENSE_NUM_RE = re.compile(r"^(?:\d+\.|\([a-z]\))\s+")
WS_RE = re.compile(r"\s+")


def bracket_depth_delta(s):
    return s.count("[") - s.count("]")


def clean_text(s):
    s = SOURCE_TAG_RE.sub(" ", s)
    # Remove remaining bracketed notes ([R.], [Obs.], [See ...]); repeat for nesting.
    for _ in range(3):
        s = BRACKET_RE.sub(" ", s)
    s = CITATION_RE.sub("", s)
    # {Cross refs}: keep the word, drop syllable markers inside braces.
    s = re.sub(r"\{([^{}]*)\}", lambda m: m.group(1).replace("*", "").replace('"', "").replace("`", ""), s)
    s = s.replace("{", "").replace("}", "").replace("\\", "")
    s = PAREN_EMPTY_RE.sub(" ", s)
    s = WS_RE.sub(" ", s).strip()
    s = SENSE_NUM_RE.sub("", s)
    return s


def iter_entries(lines):
    """Yield lists of lines, one per dictionary entry (starts at a non-indented header)."""
    cur = None
    for line in lines:
        if line and not line[0].isspace():
            if HEADER_RE.match(line):
                if cur:
                    yield cur
                cur = [line]
                continue
        if cur is not None:
            cur.append(line)
    if cur:
        yield cur


def entry_senses(entry):
    m = HEADER_RE.match(entry[0])
    head = m.group(1).strip().rstrip(",")
    # The header continues while its etymology bracket is unbalanced.
    depth = bracket_depth_delta(entry[0])
    i = 1
    while depth > 0 and i < len(entry):
        depth += bracket_depth_delta(entry[i])
        i += 1
    body = entry[i:]
    # Header lines carry only form/pronunciation/etymology/labels: skip them.
    # Split the body into paragraphs (one sense or quotation each).
    paras, cur = [], []
    for line in body:
        if line.strip() == "":
            if cur:
                paras.append(cur)
                cur = []
        else:
            cur.append(line)
    if cur:
        paras.append(cur)
    out = []
    for p in paras:
        text_lines = [l for l in p if not re.fullmatch(r"\s*\[[^\]]*\]\s*", l)]
        if not text_lines:
            continue
        indent = min(len(l) - len(l.lstrip(" ")) for l in text_lines)
        if indent >= 8:  # quotation blocks
            continue
        first = text_lines[0].strip()
        if first.startswith(("Syn.", "Note:", "Usage:", "--")):
            continue
        t = clean_text(" ".join(l.strip() for l in text_lines))
        if len(t) < 20 or re.search(r"[?*`\\\"|<>=_]", t) or not re.match(r"^[A-Z(]", t):
            continue
        if t.startswith("Syn:"):
            continue
        if not t.endswith("."):
            t += "."
        t = re.sub(r"\s*[,;:]\s*\.$", ".", t)
        out.append(f"{head}: {t}")
    return out


def select(lines, target_bytes, stride, residue):
    picked, size = [], 0
    for i in range(residue, len(lines), stride):
        n = len(lines[i]) + 1
        if size + n > target_bytes:
            break
        picked.append(lines[i])
        size += n
    return picked


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dict", required=True, help="path to gcide.dict.dz (or plain gcide.dict)")
    ap.add_argument("--out", default="datasets/gcide")
    ap.add_argument("--sample-bytes", type=int, default=200_000)
    ap.add_argument("--eval-bytes", type=int, default=20_000)
    ap.add_argument("--large-bytes", type=int, default=0,
                    help="also write gcide-large.txt: this many bytes of senses spread over the whole "
                         "dictionary, none of them in the eval slice (the GPU pretraining corpus)")
    args = ap.parse_args()

    opener = gzip.open if args.dict.endswith(".dz") or args.dict.endswith(".gz") else open
    with opener(args.dict, "rt", encoding="utf-8", errors="replace") as f:
        raw = f.read().split("\n")

    senses = []
    for entry in iter_entries(raw):
        senses.extend(entry_senses(entry))
    total = sum(len(s) + 1 for s in senses)

    # Training sample: lines i with i % stride == 0, spread across the whole alphabet.
    stride = max(2, total // args.sample_bytes)
    sample = select(senses, args.sample_bytes, stride, 0)
    # Eval: lines i with i % (10*stride) == stride // 2 (never 0 mod stride => disjoint).
    eval_lines = select(senses, args.eval_bytes, stride * 10, stride // 2)

    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "gcide-sample.txt"), "w", encoding="utf-8", newline="\n") as f:
        f.write("\n".join(sample) + "\n")
    with open(os.path.join(args.out, "gcide-eval.txt"), "w", encoding="utf-8", newline="\n") as f:
        f.write("\n".join(eval_lines) + "\n")
    if args.large_bytes:
        held_out = set(eval_lines)
        pool = [s for s in senses if s not in held_out]
        pool_bytes = sum(len(s) + 1 for s in pool)
        large = select(pool, args.large_bytes, max(1, pool_bytes // args.large_bytes), 0)
        with open(os.path.join(args.out, "gcide-large.txt"), "w", encoding="utf-8", newline="\n") as f:
            f.write("\n".join(large) + "\n")
        print(f"large_lines={len(large)} of {len(pool)} held-out-free senses ({pool_bytes} bytes)")
    print(f"senses={len(senses)} total_bytes={total} stride={stride} "
          f"sample_lines={len(sample)} eval_lines={len(eval_lines)}")


if __name__ == "__main__":
    main()
