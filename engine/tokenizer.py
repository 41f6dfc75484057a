"""Tokenizer, chat prompt and reasoning budget for Nemotron 3 Nano (Omni).

This module wraps the Hugging Face `tokenizers` library (never `transformers`) and holds the
small amount of prompt logic the engine needs:

* `Tokenizer`: loads `tokenizer.json` from a model directory; encode / decode / token lookups and
  the stop ids.  Encoding never adds a BOS token (the model is trained without one), and special
  tokens written in the text (`<think>`, `<image>`, ...) map to their single ids.
* `StreamDecoder`: incremental detokenization for streaming output.  Byte-level BPE tokens can end
  in the middle of a multi-byte UTF-8 character; the decoder holds such text back until the
  character is complete, so the pieces it returns always concatenate to `decode(all_ids)`.
* `build_chat_prompt`: the ChatML prompt of the released Nemotron 3 Nano chat template.
* `validate_template_tokens`: checks up front that the template's special tokens exist.
* `ReasoningBudget`: caps the length of the `<think>` span during generation.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence

import tokenizers

__all__ = [
    "MissingTokenError",
    "Tokenizer",
    "StreamDecoder",
    "build_chat_prompt",
    "validate_template_tokens",
    "ReasoningBudget",
    "IM_START",
    "IM_END",
    "THINK_START",
    "THINK_END",
    "TEMPLATE_TOKENS",
]

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
THINK_START = "<think>"
THINK_END = "</think>"
# Every special token `build_chat_prompt` can emit, in both reasoning modes.
TEMPLATE_TOKENS = (IM_START, IM_END, THINK_START, THINK_END)
# Stop tokens of the released checkpoints (spec section 6): `</s>` (2) and `<|im_end|>` (11).
_STOP_TOKENS = ("</s>", IM_END)

_REPLACEMENT_CHAR = "\ufffd"


class MissingTokenError(ValueError):
    """A token the caller needs is not a single token of the tokenizer."""


# ------------------------------------------------------------------------------------------------
# Tokenizer
# ------------------------------------------------------------------------------------------------
def _token_name(value) -> str | None:
    """A special-token entry of tokenizer_config.json / special_tokens_map.json: a string or an
    AddedToken dict `{"content": ...}`."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _read_json(path: str) -> dict:
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    return data if isinstance(data, dict) else {}


class Tokenizer:
    """A byte-level BPE tokenizer loaded from `tokenizer.json`.

    Attributes:
        path: the `tokenizer.json` file it was loaded from (used in error messages).
        special_names: names of the configured special tokens (`bos_token`, `eos_token`, ...) as
            read from `tokenizer_config.json` / `special_tokens_map.json`; empty if those files are
            absent.  Only names are read from these files, nothing else.
        chat_template: the model's Jinja chat template text if the directory carries one, else
            None.  Kept for reference only: prompts are built by `build_chat_prompt`.
    """

    def __init__(
        self,
        tokenizer: tokenizers.Tokenizer,
        path: str = "<in-memory tokenizer>",
        special_names: Mapping[str, str] | None = None,
        chat_template: str | None = None,
    ):
        self._tk = tokenizer
        # A tokenizer.json may carry padding/truncation settings; neither belongs in an engine that
        # feeds exact token streams.  Special tokens in the text must match as single tokens.
        self._tk.no_padding()
        self._tk.no_truncation()
        self._tk.encode_special_tokens = False
        self.path = path
        self.special_names = dict(special_names or {})
        self.chat_template = chat_template

    @classmethod
    def from_dir(cls, model_dir: str | os.PathLike) -> Tokenizer:
        """Load `<model_dir>/tokenizer.json`.

        `tokenizer_config.json` and `special_tokens_map.json` are read, if present, only for the
        names of the special tokens (the latter wins where both give one); the chat template is
        taken from `chat_template.jinja` or the `chat_template` field of `tokenizer_config.json`.

        Raises:
            FileNotFoundError: `tokenizer.json` is missing.
        """
        model_dir = os.fspath(model_dir)
        path = os.path.join(model_dir, "tokenizer.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no tokenizer.json in {model_dir!r} (expected {path!r})")
        tk = tokenizers.Tokenizer.from_file(path)

        config = _read_json(os.path.join(model_dir, "tokenizer_config.json"))
        names: dict[str, str] = {}
        for source in (config, _read_json(os.path.join(model_dir, "special_tokens_map.json"))):
            for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
                name = _token_name(source.get(key))
                if name is not None:
                    names[key] = name

        template = None
        jinja_path = os.path.join(model_dir, "chat_template.jinja")
        if os.path.isfile(jinja_path):
            with open(jinja_path, encoding="utf-8") as f:
                template = f.read()
        elif isinstance(config.get("chat_template"), str):
            template = config["chat_template"]
        return cls(tk, path=path, special_names=names, chat_template=template)

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included."""
        return self._tk.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; no BOS/EOS is added.  Special tokens written in the text (e.g.
        `<think>`, `<image>`) become their single ids."""
        return self._tk.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Text of `ids`.  Bytes that do not form valid UTF-8 decode to U+FFFD."""
        return self._tk.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_id(self, token: str) -> int:
        """Id of the vocabulary entry `token` (e.g. `"<think>"`).

        Raises:
            MissingTokenError: `token` is not in the vocabulary; the message names the token and
                the tokenizer file.
        """
        tid = self._tk.token_to_id(token)
        if tid is None:
            raise MissingTokenError(f"token {token!r} is not in the vocabulary of {self.path}")
        return tid

    def has_token(self, token: str) -> bool:
        """Whether `token` is a vocabulary entry."""
        return self._tk.token_to_id(token) is not None

    def id_to_token(self, token_id: int) -> str | None:
        """Vocabulary string of `token_id` (byte-level form for BPE pieces), None if out of range."""
        return self._tk.id_to_token(token_id)

    @property
    def eos_ids(self) -> list[int]:
        """Ids that end generation: `</s>` and `<|im_end|>` where present, plus the configured
        `eos_token` if it is another token.  Sorted, no duplicates."""
        names = list(_STOP_TOKENS)
        if "eos_token" in self.special_names:
            names.append(self.special_names["eos_token"])
        return sorted({tid for tid in map(self._tk.token_to_id, names) if tid is not None})


# ------------------------------------------------------------------------------------------------
# Streaming detokenization
# ------------------------------------------------------------------------------------------------
class StreamDecoder:
    """Incremental detokenizer: feed generated ids one at a time, get the newly completed text.

    It keeps two offsets into the ids seen so far: text before `read_offset` has been returned,
    and `prefix_offset..read_offset` is a short window decoded again as context (decoders may
    render a token differently at the start of a sequence).  After each id it decodes
    `ids[prefix_offset:]`; if that text ends in U+FFFD the last token stopped inside a UTF-8
    character, so nothing is returned until a later token completes it.  Because text is only
    released at a complete character, the pieces concatenate exactly to `decode(ids)` once
    `flush()` has returned whatever is still held.

    Usage:
        stream = StreamDecoder(tok)
        for tid in generated:
            print(stream.feed(tid), end="")
        print(stream.flush())
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = False):
        self._tok = tokenizer
        self._skip = skip_special_tokens
        self._ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0

    def _decode(self, start: int, stop: int | None = None) -> str:
        return self._tok.decode(self._ids[start:stop], skip_special_tokens=self._skip)

    def feed(self, token_id: int) -> str:
        """Add one id; return the text it completes (possibly "")."""
        self._ids.append(int(token_id))
        prefix = self._decode(self._prefix_offset, self._read_offset)
        text = self._decode(self._prefix_offset)
        if len(text) > len(prefix) and not text.endswith(_REPLACEMENT_CHAR):
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._ids)
            return text[len(prefix):]
        return ""

    def flush(self) -> str:
        """Return the held-back text (e.g. a trailing incomplete character as U+FFFD) and mark
        everything as read.  Call once at the end of the stream."""
        prefix = self._decode(self._prefix_offset, self._read_offset)
        text = self._decode(self._prefix_offset)
        self._prefix_offset = self._read_offset = len(self._ids)
        return text[len(prefix):]


# ------------------------------------------------------------------------------------------------
# Chat prompt
# ------------------------------------------------------------------------------------------------
def _assistant_turn(message: Mapping, strip_reasoning: bool) -> str:
    content = message.get("content") or ""
    if not isinstance(content, str):
        raise TypeError(f"assistant content must be a string, got {type(content).__name__}")
    reasoning = message.get("reasoning_content")
    if isinstance(reasoning, str) and reasoning.strip():
        content = f"{THINK_START}\n{reasoning}\n{THINK_END}\n{content}"
    elif THINK_START not in content and THINK_END not in content:
        content = THINK_START + THINK_END + content
    if strip_reasoning and THINK_START in content and THINK_END in content:
        content = THINK_START + THINK_END + content.split(THINK_END)[-1]
    return f"{IM_START}assistant\n{content.strip()}{IM_END}\n"


def build_chat_prompt(
    messages: Sequence[Mapping],
    *,
    reasoning: bool = True,
    add_generation_prompt: bool = True,
) -> str:
    """Render `messages` with the ChatML format of the released Nemotron 3 Nano chat template.

    `messages` are dicts with `role` ("system", "user" or "assistant") and `content` (a string;
    multimodal placeholders such as `<image>` are written into it by the caller).  An assistant
    message may also carry `reasoning_content`.  Tool calls are not supported.

    Format (`\\n` is a newline; nothing else is inserted between the pieces):

        <|im_start|>system\\n{system}<|im_end|>\\n
        <|im_start|>user\\n{content}<|im_end|>\\n
        <|im_start|>assistant\\n{answer}<|im_end|>\\n
        ...
        <|im_start|>assistant\\n<think>\\n          (add_generation_prompt, reasoning on)
        <|im_start|>assistant\\n<think></think>     (add_generation_prompt, reasoning off)

    * The system turn is always emitted; `{system}` is the content of a leading system message or
      empty (`<|im_start|>system\\n<|im_end|>\\n`).  Later system messages render like user turns.
    * User and system content is inserted verbatim (not stripped).
    * Assistant `{answer}`: the content, prefixed with `<think></think>` unless it already contains
      `<think>` or `</think>`; with `reasoning_content` it is
      `<think>\\n{reasoning_content}\\n</think>\\n{content}` instead.  Assistant turns before the
      last user message drop their reasoning: everything up to the last `</think>` becomes
      `<think></think>` (so `<think>\\nR\\n</think>\\nA` becomes `<think></think>\\nA`).  The
      result is stripped of surrounding whitespace.
    * No BOS token; `reasoning` only changes the generation prompt.
    """
    messages = list(messages)
    system = ""
    if messages and messages[0].get("role") == "system":
        system = messages[0].get("content") or ""
        messages = messages[1:]
    last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)

    parts = [f"{IM_START}system\n{system}{IM_END}\n"]
    for i, message in enumerate(messages):
        role = message.get("role")
        if role == "assistant":
            if message.get("tool_calls"):
                raise ValueError("assistant tool_calls are not supported by build_chat_prompt")
            parts.append(_assistant_turn(message, strip_reasoning=i < last_user))
        elif role in ("user", "system"):
            content = message.get("content")
            if not isinstance(content, str):
                raise TypeError(f"{role} content must be a string, got {type(content).__name__}")
            parts.append(f"{IM_START}{role}\n{content}{IM_END}\n")
        else:
            raise ValueError(f"unsupported chat role {role!r} (expected system, user or assistant)")
    if add_generation_prompt:
        opening = f"{THINK_START}\n" if reasoning else THINK_START + THINK_END
        parts.append(f"{IM_START}assistant\n{opening}")
    return "".join(parts)


def validate_template_tokens(tokenizer: Tokenizer, reasoning: bool = True) -> dict[str, int]:
    """Check that every special token of the chat template is a single token of `tokenizer`.

    Both modes need the same four tokens (`<|im_start|>`, `<|im_end|>`, `<think>`, `</think>`):
    with reasoning off the prompt ends in `<think></think>`, and earlier assistant turns carry
    `<think></think>` in either mode.  `reasoning` names the mode for the error message.  Call this
    before any model work so a wrong tokenizer fails fast.

    Returns:
        token string -> id for the four tokens.

    Raises:
        MissingTokenError (a ValueError): a token is absent, or its text does not encode to that
            single id; the message names the token and the tokenizer file.
    """
    ids = {}
    mode = "on" if reasoning else "off"
    for token in TEMPLATE_TOKENS:
        if not tokenizer.has_token(token):
            raise MissingTokenError(
                f"chat template (reasoning {mode}) needs special token {token!r}, "
                f"which is not in the vocabulary of {tokenizer.path}"
            )
        tid = tokenizer.token_id(token)
        encoded = tokenizer.encode(token)
        if encoded != [tid]:
            raise MissingTokenError(
                f"chat template (reasoning {mode}) needs {token!r} as a single token, but "
                f"{tokenizer.path} encodes it as {encoded}"
            )
        ids[token] = tid
    return ids


# ------------------------------------------------------------------------------------------------
# Reasoning budget
# ------------------------------------------------------------------------------------------------
class ReasoningBudget:
    """Caps the `<think>` span of a reasoning-mode generation.

    The prompt ends with `<think>\\n`, so generation starts inside the span.  Feed every generated
    id to `step()`; it returns None, or the list of ids the caller must append (in order, without
    sampling) to close the span, typically `[newline_id, think_end_id]`.  Forced ids need not be
    fed back.  Once `think_end_id` has been generated, or the close has been forced, `step()`
    always returns None.

    Args:
        budget: the most generated tokens the span may hold (>= 1).  When the `budget`-th token
            is not `think_end_id`, `step()` returns `close_ids` for it.
        think_end_id: id of `</think>`; generating it ends the span naturally.
        close_ids: ids to force; should end with `think_end_id`.
        grace: optional soft margin.  With `grace > 0` the close is delayed, after the budget, until
            a token in `newline_ids` is generated (so the thought ends at a line break), but never
            beyond `budget + grace` tokens.
        newline_ids: ids that end a line, used only with `grace`.
    """

    def __init__(
        self,
        budget: int,
        think_end_id: int,
        close_ids: Sequence[int],
        *,
        grace: int = 0,
        newline_ids: Iterable[int] = (),
    ):
        if budget < 1:
            raise ValueError(f"reasoning budget must be >= 1 token, got {budget}")
        if grace < 0:
            raise ValueError(f"grace must be >= 0, got {grace}")
        if not close_ids:
            raise ValueError("close_ids must not be empty")
        self.budget = budget
        self.think_end_id = think_end_id
        self.close_ids = [int(t) for t in close_ids]
        self.grace = grace
        self.newline_ids = frozenset(newline_ids)
        self.count = 0  # generated tokens inside the span so far
        self.done = False  # span closed (naturally or forced)
        self.forced = False  # the close was forced by this budget

    def step(self, token_id: int) -> list[int] | None:
        """Account for one generated id; return ids to force, or None for nothing."""
        if self.done:
            return None
        if token_id == self.think_end_id:
            self.done = True
            return None
        self.count += 1
        if self.count < self.budget:
            return None
        at_line_end = token_id in self.newline_ids
        if self.grace and not at_line_end and self.count < self.budget + self.grace:
            return None
        self.done = self.forced = True
        return list(self.close_ids)


# ------------------------------------------------------------------------------------------------
# Training a small tokenizer (tests, the bundled default model)
# ------------------------------------------------------------------------------------------------
# The released tokenizer reserves the low ids for special tokens; the ones the engine relies on sit
# at the same ids here, the other reserved slots get placeholder names. Pre-tokenization mirrors
# the released one: a Split regex, then ByteLevel without its own regex. Every byte has a token,
# so any text encodes.
SPECIAL_TOKENS = {
    0: "<unk>",
    1: "<s>",
    2: "</s>",
    10: "<|im_start|>",
    11: "<|im_end|>",
    12: "<think>",
    13: "</think>",
    18: "<image>",
    19: "<img>",
    20: "</img>",
    21: "<video>",
    25: "<so_start>",
    26: "<so_end>",
    27: "<so_embedding>",
}
NUM_RESERVED = 32

# Letters (with marks) with an optional leading non-letter, single digits, punctuation runs,
# newlines, and whitespace; the same shape as the released pre-tokenizer.
_SPLIT_REGEX = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|"
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

SAMPLE_CORPUS = [
    "The model thinks step by step before it answers.",
    "Describe the image in detail. What is happening in this video?",
    "Transcribe the audio and summarize it in one sentence.",
    "The quick brown fox jumps over the lazy dog.",
    "Numbers 0 1 2 3 4 5 6 7 8 9 and symbols ( ) [ ] { } < > / : ; , . ! ?",
    "Café au lait, crème brûlée, naïve résumé.",
    "日本語のテキストも少し含めます。",
]


def special_token_list() -> list[str]:
    """Names of ids 0..NUM_RESERVED-1, in id order."""
    return [SPECIAL_TOKENS.get(i, f"<SPECIAL_{i}>") for i in range(NUM_RESERVED)]


def train_tokenizer(out_dir: str | os.PathLike, texts=SAMPLE_CORPUS, vocab_size: int = 300, repeat: int = 10,
                    whole_numbers: int = 0) -> str:
    """Train a byte-level BPE tokenizer on `texts`, shaped like the released Nemotron one, and write `tokenizer.json` (plus a minimal `tokenizer_config.json` that
    transformers' `PreTrainedTokenizerFast` also accepts) into `out_dir`.

    Special tokens sit at the released ids (SPECIAL_TOKENS). Deterministic for given texts and `vocab_size` (>= 288: 32 reserved ids + 256 bytes).
    `whole_numbers` > 10 makes each integer below it one token (added tokens, after the BPE ones;
    longer numbers split longest-first): digits one by one make a time like 48.6 four tokens that a
    small model copies poorly. The BPE part then gets the vocabulary those leave.
    Returns the path of `tokenizer.json`.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    numbers = [str(n) for n in range(10, whole_numbers)]
    if vocab_size - len(numbers) < NUM_RESERVED + 256:
        raise ValueError(f"vocab_size must be >= {NUM_RESERVED + 256 + len(numbers)} (with {len(numbers)} whole-number "
                         f"tokens), got {vocab_size}")
    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(numbers),
        special_tokens=special_token_list(),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts) * repeat, trainer)
    for tid, name in SPECIAL_TOKENS.items():
        assert tok.token_to_id(name) == tid, (name, tok.token_to_id(name), tid)
    tok.add_tokens([n for n in numbers if tok.token_to_id(n) is None])

    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(os.fspath(out_dir), "tokenizer.json")
    tok.save(path)
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "<unk>",
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
    }
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    return path
