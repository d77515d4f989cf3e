"""Time loading the `smollm2-135m` alias: the first call converts the GGUF file into the cached folder,
later calls load that folder. Prints one line per phase.

    python bench/smollm2_load.py            # uses $TUNEFORGE_CACHE_DIR (default ~/.cache/tuneforge)
"""

from __future__ import annotations

import time

import torch


def main() -> None:
    torch.set_num_threads(1)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneforge.base.gguf_cache import READY_MARKER, cached_folder_for
    from tuneforge.base.models import ALIASES, resolve_model

    gguf = ALIASES["smollm2-135m"].locate()
    cached = (cached_folder_for(gguf) / READY_MARKER).is_file()
    started = time.perf_counter()
    folder = resolve_model("smollm2-135m")
    resolved = time.perf_counter()
    AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    loaded = time.perf_counter()
    print(f"cache was {'warm' if cached else 'cold'}: resolve (hash{'' if cached else ' + convert'}) "
          f"{resolved - started:.1f}s, load tokenizer + model {loaded - resolved:.1f}s, total {loaded - started:.1f}s; "
          f"{sum(p.numel() for p in model.parameters()):,} parameters; folder {folder}")


if __name__ == "__main__":
    main()
