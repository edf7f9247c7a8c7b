"""An Ollama ``Modelfile`` beside an exported GGUF file, so that ``ollama create NAME -f Modelfile``
works: ``FROM`` the file, a ``TEMPLATE`` in Ollama's Go template language translated from the
chat template's shape (ChatML, Llama 3, Mistral ``[INST]``), the stop tokens and a few parameters.

A chat template of another shape gets no ``TEMPLATE`` line (a comment says so): Ollama then
matches the template the GGUF file carries (``tokenizer.chat_template``) against the ones it knows,
and falls back to the raw prompt.
"""

from __future__ import annotations

from typing import Any

__all__ = ["template_shape", "ollama_template", "stop_tokens", "modelfile_text"]

_CHATML = """{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}
{{- range .Messages }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
"""

_LLAMA3 = """{{- if .System }}<|start_header_id|>system<|end_header_id|>

{{ .System }}<|eot_id|>
{{- end }}
{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>

{{ .Content }}<|eot_id|>
{{- end }}<|start_header_id|>assistant<|end_header_id|>

"""

_MISTRAL = """{{- range $i, $_ := .Messages }}
{{- if eq .Role "user" }}[INST] {{ if and $.System (eq $i 0) }}{{ $.System }}

{{ end }}{{ .Content }}[/INST]
{{- else if eq .Role "assistant" }} {{ .Content }}</s>
{{- end }}
{{- end }}"""

_TEMPLATES = {"chatml": _CHATML, "llama3": _LLAMA3, "mistral": _MISTRAL}

# end-of-turn tokens of the common templates, matched in the template text
_END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>")


def template_shape(chat_template: str | None) -> str | None:
    """``chatml``, ``llama3``, ``mistral`` or None (no template, or one of another shape)."""
    if not chat_template:
        return None
    if "<|im_start|>" in chat_template and "<|im_end|>" in chat_template:
        return "chatml"
    if "<|start_header_id|>" in chat_template and "<|eot_id|>" in chat_template:
        return "llama3"
    if "[INST]" in chat_template and "[/INST]" in chat_template:
        return "mistral"
    return None


def ollama_template(chat_template: str | None) -> str | None:
    shape = template_shape(chat_template)
    return _TEMPLATES[shape] if shape else None


def stop_tokens(chat_template: str | None, eos_token: str | None) -> list[str]:
    """The end-of-turn tokens the template writes, then the eos token."""
    stops = [t for t in _END_OF_TURN if chat_template and t in chat_template]
    if template_shape(chat_template) == "mistral":
        stops.append("[INST]")
    if eos_token and eos_token not in stops:
        stops.append(eos_token)
    return stops


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def modelfile_text(gguf_name: str, meta: dict[str, Any], context_length: int | None = None) -> str:
    """The Modelfile for ``gguf_name`` (a file in the same folder). ``meta``: what
    :func:`..tokenizer_meta.write_tokenizer` returned."""
    template = meta.get("chat_template")
    if isinstance(template, (list, dict)):  # several named templates: the default one
        named = dict(template) if isinstance(template, dict) else {t["name"]: t["template"] for t in template}
        template = named.get("default")
    lines = ["# written by sage-finetune export; use it with: ollama create NAME -f Modelfile", f"FROM ./{gguf_name}", ""]
    body = ollama_template(template)
    if body is not None:
        lines.append(f'TEMPLATE """{body}"""')
    elif template:
        lines.append("# the chat template has no shape this exporter translates (ChatML, Llama 3, Mistral [INST]);")
        lines.append("# Ollama matches the template stored in the GGUF file (tokenizer.chat_template) instead")
    else:
        lines.append("# the model has no chat template: Ollama sends the prompt as it is")
    for stop in stop_tokens(template, meta.get("eos_token")):
        lines.append(f"PARAMETER stop {_quoted(stop)}")
    if context_length:
        lines.append(f"PARAMETER num_ctx {min(int(context_length), 8192)}")
    return "\n".join(lines) + "\n"
