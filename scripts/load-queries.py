"""Writes distinct search queries for the load benchmark (`serve/examples/load.rs`) from a
BEIR-layout set: its queries, then each document's title, first and second sentence (cut
at 300 characters), each text once. A 60-second run at 16 clients needs more queries than SciFact
has, and none may repeat, so that no cache makes the figure.

    python3 scripts/load-queries.py ../shared/datasets/scifact > QUERIES.jsonl
"""

import json
import os
import re
import sys


def main():
    root = sys.argv[1]
    seen, out = set(), []

    def add(text):
        text = " ".join(text.split())[:300]
        if text and text not in seen:
            seen.add(text)
            out.append(text)

    with open(os.path.join(root, "queries.jsonl"), encoding="utf-8") as f:
        for line in f:
            add(json.loads(line)["text"])
    with open(os.path.join(root, "corpus.jsonl"), encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)
            add(doc.get("title", ""))
            for sentence in re.split(r"(?<=[.!?])\s+", doc.get("text", "").strip(), maxsplit=2)[:2]:
                add(sentence)
    for i, text in enumerate(out):
        print(json.dumps({"_id": str(i), "text": text}))
    words = sorted(len(t.split()) for t in out)
    print(f"{len(out)} queries, mean {sum(words) / len(words):.1f} words, p90 {words[len(words) * 9 // 10]}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
