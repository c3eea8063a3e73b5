"""A tokenizer built from tokenizer_config.json alone (the fixtures carry no vocabulary).

It has what the project and the double call: ``chat_template``, ``apply_chat_template``
(rendered with Jinja as transformers renders it), ``encode`` / ``decode``, the special
tokens and their ids. Text is cut GPT-2 style (a word with its leading space, a digit, a run
of punctuation), one token each, so counts are close to a real BPE's; special tokens from
the config are single tokens with their real ids. Encoding then decoding gives the text back.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from typing import Any, Sequence

_PIECES = re.compile(r" ?[A-Za-z]+| ?\d| ?[^\sA-Za-z\d]+|\s+(?!\S)|\s+")
_SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")


def _content(tok: Any) -> str | None:
    if isinstance(tok, dict):
        return tok.get("content")
    return tok


class FakeTokenizer:
    is_fast = True
    padding_side = "left"
    truncation_side = "left"

    def __init__(self, name_or_path: str, tokenizer_config: dict[str, Any], vocab_size: int) -> None:
        self.name_or_path = name_or_path
        self.init_kwargs = dict(tokenizer_config)
        self.vocab_size = int(vocab_size)
        self.chat_template: str | None = tokenizer_config.get("chat_template")
        if isinstance(self.chat_template, list):  # named templates: the default one
            named = {t.get("name"): t.get("template") for t in self.chat_template}
            self.chat_template = named.get("default")
        self.model_max_length = tokenizer_config.get("model_max_length")
        self.add_bos_token = bool(tokenizer_config.get("add_bos_token", False))
        self.add_eos_token = bool(tokenizer_config.get("add_eos_token", False))
        specials: dict[str, int] = {}
        for sid, tok in (tokenizer_config.get("added_tokens_decoder") or {}).items():
            text = _content(tok)
            if text:
                specials[text] = int(sid)
        for key in _SPECIAL_KEYS:
            text = _content(tokenizer_config.get(key))
            setattr(self, key, text)
        extra = [_content(t) for t in tokenizer_config.get("additional_special_tokens") or []]
        for text in [getattr(self, k) for k in _SPECIAL_KEYS] + extra:
            if text and text not in specials:  # a special token of the config without a listed id
                specials[text] = self._hash_id(text, avoid=set(specials.values()))
        self._special = specials
        self._special_ids = set(specials.values())
        self._id_to_piece: dict[int, str] = {i: t for t, i in specials.items()}
        self._piece_to_id: dict[str, int] = dict(specials)
        alts = sorted(specials, key=len, reverse=True)
        self._special_re = re.compile("(" + "|".join(re.escape(t) for t in alts) + ")") if alts else None
        for key in _SPECIAL_KEYS:
            text = getattr(self, key)
            setattr(self, f"{key}_id", specials.get(text) if text else None)

    # ------------------------------------------------------------ vocabulary

    def _hash_id(self, piece: str, avoid: set[int]) -> int:
        h = int.from_bytes(hashlib.blake2b(piece.encode("utf-8"), digest_size=8).digest(), "little")
        i = h % self.vocab_size
        while i in avoid:
            i = (i + 1) % self.vocab_size
        return i

    def _id(self, piece: str) -> int:
        i = self._piece_to_id.get(piece)
        if i is None:
            i = self._hash_id(piece, self._special_ids)
            while self._id_to_piece.get(i, piece) != piece:  # taken by another piece: the next free id
                i = (i + 1) % self.vocab_size
                while i in self._special_ids:
                    i = (i + 1) % self.vocab_size
            self._piece_to_id[piece] = i
            self._id_to_piece[i] = piece
        return i

    @property
    def all_special_tokens(self) -> list[str]:
        return list(self._special)

    @property
    def all_special_ids(self) -> list[int]:
        return list(self._special.values())

    def get_vocab(self) -> dict[str, int]:
        return dict(self._piece_to_id)

    def __len__(self) -> int:
        return self.vocab_size

    # ------------------------------------------------------------ text <-> ids

    def tokenize(self, text: str) -> list[str]:
        out: list[str] = []
        parts = self._special_re.split(text) if self._special_re else [text]
        for part in parts:
            if not part:
                continue
            if part in self._special:
                out.append(part)
            else:
                out.extend(_PIECES.findall(part))
        return out

    def encode(self, text: str, add_special_tokens: bool = True, truncation: bool | None = None,
               max_length: int | None = None, **kwargs: Any) -> list[int]:
        ids = [self._id(p) for p in self.tokenize(text)]
        if add_special_tokens:
            if self.add_bos_token and self.bos_token_id is not None:
                ids = [self.bos_token_id] + ids
            if self.add_eos_token and self.eos_token_id is not None:
                ids = ids + [self.eos_token_id]
        if truncation and max_length is not None:
            ids = ids[-max_length:] if self.truncation_side == "left" else ids[:max_length]
        return ids

    def __call__(self, text: str, add_special_tokens: bool = True, **kwargs: Any) -> dict[str, list[int]]:
        ids = self.encode(text, add_special_tokens=add_special_tokens, **kwargs)
        return {"input_ids": ids, "attention_mask": [1] * len(ids)}

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        return [self._id_to_piece.get(int(i), "<unk>") for i in ids]

    def convert_tokens_to_string(self, tokens: Sequence[str]) -> str:
        return "".join(tokens)

    def decode(self, ids: int | Sequence[int], skip_special_tokens: bool = False, **kwargs: Any) -> str:
        if isinstance(ids, int):
            ids = [ids]
        return "".join(self._id_to_piece.get(int(i), "") for i in ids
                       if not (skip_special_tokens and int(i) in self._special_ids))

    def batch_decode(self, seqs: Sequence[Sequence[int]], skip_special_tokens: bool = False, **kw: Any) -> list[str]:
        return [self.decode(s, skip_special_tokens=skip_special_tokens) for s in seqs]

    # ------------------------------------------------------------ chat

    def apply_chat_template(self, conversation: Sequence[dict[str, Any]], tools: list[dict] | None = None,
                            documents: list[dict] | None = None, chat_template: str | None = None,
                            add_generation_prompt: bool = False, continue_final_message: bool = False,
                            tokenize: bool = True, padding: bool = False, truncation: bool = False,
                            max_length: int | None = None, return_tensors: str | None = None,
                            return_dict: bool = False, return_assistant_tokens_mask: bool = False,
                            tokenizer_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        """transformers' apply_chat_template: a sandboxed Jinja environment with ``trim_blocks`` and
        ``lstrip_blocks``, ``raise_exception`` and ``strftime_now``, the special tokens as variables."""
        template = chat_template or self.chat_template
        if template is None:
            raise ValueError(
                "Cannot use chat template functions because tokenizer.chat_template is not set and no template "
                "argument was passed! For information about writing templates and setting the "
                "tokenizer.chat_template attribute, please see the documentation at "
                "https://huggingface.co/docs/transformers/main/en/chat_templating")
        text = _render(template, messages=list(conversation), tools=tools, documents=documents,
                       add_generation_prompt=add_generation_prompt,
                       **{k: getattr(self, k) for k in _SPECIAL_KEYS}, **kwargs)
        if not tokenize:
            return text
        ids = self.encode(text, add_special_tokens=False)
        if truncation and max_length is not None:
            ids = ids[:max_length]
        return {"input_ids": ids} if return_dict else ids


def _render(template: str, **context: Any) -> str:
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def strftime_now(fmt: str) -> str:
        return datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env.from_string(template).render(**context)
