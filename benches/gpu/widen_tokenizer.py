"""Writes a tokenizer.json whose vocabulary covers a random-weight model's: SmolLM2's tokenizer
(49 152 tokens) given to a folder of a larger vocabulary (the Llama-3.2-1B shape's 128 256)
gets an added token `<|r12345|>` (plain text, not special) for every id past its own, so
every generated id decodes to text. Without them the ids past 49 152 streamed nothing, and
`camelid bench`, which times the chunks that carry text, merged their gaps (ITL about
doubled) and could read no first token at all.

  python3 widen_tokenizer.py SRC_TOKENIZER_JSON MODEL_DIR   (vocab_size from MODEL_DIR/config.json)
"""
import json
import os
import sys


def widen(src, model_dir):
    with open(os.path.join(model_dir, "config.json")) as f:
        vocab = json.load(f)["vocab_size"]
    with open(src) as f:
        tok = json.load(f)
    ids = set(tok["model"]["vocab"].values()) | {t["id"] for t in tok.get("added_tokens", [])}
    have = max(ids) + 1
    for i in range(have, vocab):
        tok["added_tokens"].append({"id": i, "content": f"<|r{i}|>", "single_word": False,
                                    "lstrip": False, "rstrip": False, "normalized": False,
                                    "special": False})
    with open(os.path.join(model_dir, "tokenizer.json"), "w") as f:
        json.dump(tok, f, ensure_ascii=False)
    return have, vocab


if __name__ == "__main__":
    have, vocab = widen(sys.argv[1], sys.argv[2])
    print(f"tokenizer: {have} ids, {max(0, vocab - have)} added for the model's {vocab}", file=sys.stderr)
