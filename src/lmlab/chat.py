"""Chat: a model's chat template turns a conversation (a list of messages) into its prompt, as Hugging Face's
`apply_chat_template` renders it, and names the tokens that end the model's turn.

- Where the template comes from: the run's tokenizer_config.json (`chat_template`, a string or a list of named
  templates, "default" taken), as written by `lmlab convert` from a GGUF file's metadata or a Hugging Face
  directory, or a Jinja file given with `--chat-template FILE.jinja` (at convert, serve and chat time).
- How it is rendered: jinja2's ImmutableSandboxedEnvironment (a template cannot reach Python objects or change
  its arguments) with trim_blocks and lstrip_blocks, the `loopcontrols` extension, a `tojson` filter that keeps
  non-ASCII text, `raise_exception(message)` and `strftime_now(format)` as globals, `{% generation %}` blocks
  rendered as their body, and the variables transformers passes: `messages`, `add_generation_prompt` and the
  tokenizer's special tokens (`bos_token`, `eos_token`, `unk_token`, `pad_token`). The rendered text is
  tokenized as it stands (special tokens in it become their ids; nothing is added), as apply_chat_template
  does with tokenize=True.
- Messages are OpenAI's: {"role": "system" | "user" | "assistant" | "tool" | "developer", "content": a string or
  a list of {"type": "text", "text": ...} parts, joined}. Anything else is an LmlabError of one sentence.
- The turn ends at the tokenizer's end-of-sequence token (tokenizer_config.json's `eos_token`) and at the
  common turn-end tokens the template writes (<|im_end|>, <|eot_id|>, <|end|>, <end_of_turn>, ...).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from .errors import LmlabError

ROLES = ("system", "user", "assistant", "tool", "developer")
# Tokens that end a turn in the chat formats in use (ChatML, Llama 3, Phi-3, Gemma, Mistral / Llama 2, GPT-2).
TURN_END_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>")
SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")


def _token_text(value) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken object."""
    value = value.get("content") if isinstance(value, dict) else value
    return value if isinstance(value, str) else None


def _environment():
    import jinja2
    from jinja2 import nodes
    from jinja2.ext import Extension
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(Extension):
        """`{% generation %}...{% endgeneration %}` (transformers marks the assistant's tokens with it): its body."""
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.Scope(body).set_lineno(lineno)

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


@dataclass
class ChatTemplate:
    """A model's chat template, ready to render: its Jinja source, the special tokens it is given, the ids that
    end the model's turn, and where it came from (for error messages)."""
    source: str
    special: dict
    stop_ids: list[int]
    origin: str

    def __post_init__(self):
        import jinja2

        try:
            self._compiled = _environment().from_string(self.source)
        except jinja2.TemplateSyntaxError as e:
            raise LmlabError(f"the chat template of {self.origin} is not valid Jinja (line {e.lineno}: {e.message}); "
                             "fix it or give another with --chat-template FILE.jinja.") from None

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        import jinja2

        try:
            return self._compiled.render(messages=check_messages(messages), add_generation_prompt=add_generation_prompt,
                                         **self.special)
        except jinja2.TemplateError as e:  # raise_exception(...) in the template, or an error while rendering
            raise LmlabError(f"the chat template of {self.origin} failed on these messages: {e}.") from None
        except (TypeError, ValueError, AttributeError, KeyError, IndexError) as e:
            raise LmlabError(f"the chat template of {self.origin} failed on these messages "
                             f"({type(e).__name__}: {e}); fix it or give another with --chat-template FILE.jinja.") \
                from None


def check_messages(messages) -> list[dict]:
    """OpenAI-style messages as the template sees them: role and string content (text parts joined)."""
    if not isinstance(messages, list) or not messages:
        raise LmlabError("'messages' must be a non-empty list of {role, content} objects.")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m:
            raise LmlabError(f"messages[{i}] must be an object with a 'role' and a 'content'.")
        role = m["role"]
        if role not in ROLES:
            raise LmlabError(f"messages[{i}] has role {str(role)[:40]!r}; use one of {', '.join(ROLES)}.")
        out.append({**m, "content": message_text(m.get("content"), i)})
    return out


def message_text(content, index: int) -> str:
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                         and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    raise LmlabError(f"messages[{index}].content must be a string or a list of {{\"type\": \"text\", \"text\": ...}} "
                     "parts (images and audio are not supported).")


def template_source(settings: dict) -> str | None:
    """tokenizer_config.json's chat template: a string, or the "default" of a list of named templates."""
    template = settings.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) and template.strip() else None


def read_template_file(path: str | Path) -> str:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LmlabError(f"the chat template file {path} does not exist.") from None
    except UnicodeDecodeError:
        raise LmlabError(f"the chat template file {path} is not UTF-8 text; save it as UTF-8.") from None
    except OSError as e:
        raise LmlabError(f"cannot read the chat template file {path}: {e.strerror}.") from None
    if not text.strip():
        raise LmlabError(f"the chat template file {path} is empty.")
    return text


def load_template(tokenizer, name: str = "the model", override: str | Path | None = None) -> ChatTemplate:
    """The chat template for `tokenizer` (its tokenizer_config.json's, or the file `override`); LmlabError if
    there is none."""
    settings = getattr(tokenizer, "settings", None) or {}  # (an n-gram model is its own tokenizer: none)
    if override is not None:
        source, origin = read_template_file(override), str(override)
    else:
        source, origin = template_source(settings), name
        if source is None:
            raise LmlabError(f"{name} has no chat template (its tokenizer_config.json has no 'chat_template'); give "
                             "one with --chat-template FILE.jinja, or use generate / completions for plain text.")
    special = {key: _token_text(settings.get(key)) or "" for key in SPECIAL_KEYS}
    return ChatTemplate(source, special, turn_end_ids(tokenizer, source, special["eos_token"]), origin)


def turn_end_ids(tokenizer, source: str, eos_token: str) -> list[int]:
    """The ids that end the model's turn: its end-of-sequence token and the turn-end tokens the template writes."""
    hf = getattr(tokenizer, "hf", None)
    eot = getattr(tokenizer, "eot_id", None)
    ids = [eot] if eot is not None else []
    if hf is None:
        return ids
    for token in (eos_token, *TURN_END_TOKENS):
        tid = hf.token_to_id(token) if token else None
        if tid is not None and tid not in ids and (token == eos_token or token in source):
            ids.append(tid)
    return ids


def chat_prompt(run, messages: list[dict], add_generation_prompt: bool = True,
                chat_template: str | Path | None = None) -> tuple[str, list[int]]:
    """The prompt text and token ids of `messages` under the chat template of `run` (a run directory, or a
    (model, tokenizer) pair as lmlab.load returns)."""
    if isinstance(run, (str, Path)):
        from .tokenizer import load_tokenizer

        name, tokenizer = f"the run {run}", load_tokenizer(run)
    else:
        name, (_, tokenizer) = "the model", run
    text = load_template(tokenizer, name, chat_template).render(messages, add_generation_prompt)
    return text, list(tokenizer.encode(text))


def fit_history(template: ChatTemplate, tokenizer, messages: list[dict], budget: int,
                truncate: bool) -> tuple[list[dict], str, list[int]]:
    """The conversation's prompt within `budget` tokens. Too long: an LmlabError, or with `truncate` the oldest
    turns after any leading system messages are dropped until it fits (the last message is always kept)."""
    messages = list(messages)
    while True:
        text = template.render(messages)
        ids = list(tokenizer.encode(text))
        if len(ids) <= budget:
            return messages, text, ids
        keep = next((i for i, m in enumerate(messages) if m.get("role") not in ("system", "developer")),
                    len(messages))
        if not truncate or keep >= len(messages) - 1:
            raise LmlabError(f"the conversation is {len(ids)} tokens, more than the {budget} this model has room "
                             "for; start a new one, shorten it, or drop the oldest turns with --truncate-history.")
        del messages[keep]


# --------------------------------------------------------------------------- lmlab chat

def read_messages(path: str | Path) -> list[dict]:
    """A saved conversation: a JSON list of messages, or an object with a 'messages' list (as /save writes)."""
    from .files import read_json

    data = read_json(path)
    messages = data.get("messages") if isinstance(data, dict) else data
    try:
        return check_messages(messages)
    except LmlabError as e:
        raise LmlabError(f"{path}: {e}") from None


def save_messages(path: str | Path, messages: list[dict]) -> None:
    from .files import atomic_write_text

    atomic_write_text(path, json.dumps({"messages": messages}, ensure_ascii=False, indent=2) + "\n")


class Conversation:
    """A conversation with one model: its messages, and each reply streamed through the chat template."""

    def __init__(self, model, tokenizer, cfg, template: ChatTemplate, system: str | None = None,
                 messages: list[dict] | None = None, truncate: bool = False):
        self.model, self.tokenizer, self.cfg, self.template, self.truncate = model, tokenizer, cfg, template, truncate
        self.system = system
        self.cfg.stop_token_ids = list(template.stop_ids)
        self.messages = list(messages or [])
        self.reset(keep=bool(messages))

    def reset(self, keep: bool = False) -> None:
        if not keep:
            self.messages = []
        if self.system and not any(m["role"] == "system" for m in self.messages):
            self.messages.insert(0, {"role": "system", "content": self.system})

    def reply(self, user_text: str | None):
        """Yield the model's reply piece by piece; it joins the conversation when it ends, or is interrupted."""
        from .generate import stream

        if user_text is not None:
            self.messages.append({"role": "user", "content": user_text})
        block = self.model.block_size
        budget = block - self.cfg.max_new_tokens if block else 1 << 62
        pieces, refused = [], False
        try:
            if block and budget < 1:
                raise LmlabError(f"--max-new-tokens {self.cfg.max_new_tokens} leaves no room for the conversation "
                                 f"in this model's context of {block} tokens; ask for fewer.")
            self.messages, text, _ = fit_history(self.template, self.tokenizer, self.messages, budget,
                                                 self.truncate)
            for piece in stream(self.model, self.tokenizer, text, self.cfg):
                pieces.append(piece)
                yield piece
        except LmlabError:
            refused = True
            if user_text is not None:
                self.messages.pop()
            raise
        finally:  # the reply joins the conversation, also when Ctrl-C stopped it (with what came so far)
            if not refused:
                self.messages.append({"role": "assistant", "content": "".join(pieces)})


def chat_command(run, cfg, system: str | None = None, messages: str | None = None, chat_template: str | None = None,
                 truncate_history: bool = False, save: str | None = None, device: str = "cpu",
                 dtype: str = "fp32") -> None:
    """`lmlab chat RUN`: interactive on a terminal; otherwise stdin is one user message, answered once."""
    import sys

    from .checkpoint import load
    from .generate import decoding_model
    from .models.base import require_causal
    from .runtime import resolve_device

    from .tokenizer import load_tokenizer

    cfg.validate()
    if cfg.num_return_sequences != 1:
        raise LmlabError("chat gives one reply at a time; leave out --num-return-sequences.")
    history = read_messages(messages) if messages else None
    load_template(load_tokenizer(run), f"the run {run}", chat_template)  # (before the model loads: fail fast)
    text = None if sys.stdin.isatty() else sys.stdin.read()
    if text is not None and not text.strip() and not (history and history[-1]["role"] == "user"):
        raise LmlabError("stdin is empty; pipe in the message to answer, or run lmlab chat in a terminal.")
    model, tokenizer = load(run, device=str(resolve_device(device)))
    require_causal(model, run)
    template = load_template(tokenizer, f"the run {run}", chat_template)
    conversation = Conversation(decoding_model(model, dtype), tokenizer, cfg, template, system, history,
                                truncate_history)
    if text is not None:
        for piece in conversation.reply(text.rstrip("\n") if text.strip() else None):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
    else:
        interactive(conversation)
    if save:
        save_messages(save, conversation.messages)


def interactive(conversation: Conversation) -> None:
    import signal
    import sys

    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C stops a reply (even if started ignoring it)
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:
        pass
    print("Chatting; /reset starts over, /save FILE writes the conversation, Ctrl-C stops a reply, Ctrl-D quits.",
          file=sys.stderr)
    while True:
        try:
            line = input(">>> ")
        except EOFError:
            print(file=sys.stderr)
            return
        except KeyboardInterrupt:
            print(file=sys.stderr)
            continue
        command, _, argument = line.strip().partition(" ")
        if command == "/reset":
            conversation.reset()
            print("(new conversation)", file=sys.stderr)
            continue
        if command == "/save":
            if not argument.strip():
                print("give a file: /save FILE", file=sys.stderr)
                continue
            try:
                save_messages(argument.strip(), conversation.messages)
                print(f"(saved {len(conversation.messages)} messages to {argument.strip()})", file=sys.stderr)
            except OSError as e:
                print(f"cannot write {argument.strip()}: {e.strerror}", file=sys.stderr)
            continue
        if not line.strip():
            continue
        try:
            for piece in conversation.reply(line):
                sys.stdout.write(piece)
                sys.stdout.flush()
        except KeyboardInterrupt:
            sys.stdout.write(" [stopped]")
        except LmlabError as e:
            print(f"error: {e}", file=sys.stderr)
        sys.stdout.write("\n")
