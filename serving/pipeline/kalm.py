"""KaLM-Reranker-V1's templates (its model card, "Prompt Template"): model semantics, written into an exported
reranker's config (`RerankerConfig.prompt_template`, `document_template`, `default_instruction`), where serving and
the clients read them. T5-family checkpoints take the same words without Gemma's chat markers."""

from __future__ import annotations

DOCUMENT_TEMPLATE = "<Document>: {document}"
KALM_PROMPT_TEMPLATE = (
    "<bos><start_of_turn>user\n"
    "Judge whether the Document meets the requirements based on the Query and the Instruct provided. "
    'Note that the answer can only be "yes" or "no".\n\n'
    "<Instruct>: {instruction}\n"
    "<Query>: {query}<end_of_turn>\n"
    "<start_of_turn>model\n\n\n\n"
)
PLAIN_PROMPT_TEMPLATE = (
    "Judge whether the Document meets the requirements based on the Query and the Instruct provided. "
    'Note that the answer can only be "yes" or "no".\n\n'
    "<Instruct>: {instruction}\n"
    "<Query>: {query}\n"
)
DEFAULT_INSTRUCTION = "Given a query, retrieve documents that answer the query."


def templates(architecture: str) -> dict[str, str]:
    """The RerankerConfig fields of a checkpoint of `architecture` (t5gemma2: KaLM's chat prompt; t5: plain)."""
    prompt = KALM_PROMPT_TEMPLATE if architecture == "t5gemma2" else PLAIN_PROMPT_TEMPLATE
    return {"prompt_template": prompt, "document_template": DOCUMENT_TEMPLATE,
            "default_instruction": DEFAULT_INSTRUCTION}  # fmt: skip
