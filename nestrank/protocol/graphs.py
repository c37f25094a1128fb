"""The compiled graphs' input and output names: the exporter writes them, the pipeline feeds and reads them.

These are ONNX names, not the Triton models' tensors (those are in embedding.py and reranking.py); a few names are
the same on both sides because they carry the same thing."""

# Every encoder graph (embedder, passage encoder) reads token ids and their mask.
INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
TOKEN_INPUTS = (INPUT_IDS, ATTENTION_MASK)

# The embedder: encoder + pooling (+ normalization) in one graph.
EMBEDDINGS = "embeddings"  # pooled and L2-normalized
POOLED_EMBEDDINGS = "pooled_embeddings"  # pooled, raw (normalize=false)
# A depth ladder's segment graphs: the first reads token ids, each later one the states the one before it wrote;
# every segment but the last also writes its token states for the next.
HIDDEN_STATES = "hidden_states"
NEXT_HIDDEN_STATES = "next_hidden_states"  # an output cannot share its graph's input's name

# The reranker's passage encoder: token states, pooled (MEP) outside the graph.
TOKEN_STATES = "token_states"

# The reranker's scorer: one prompt per row (right-padded: rows of several requests share a run) cross-attending to
# pooled passage states.
DECODER_INPUT_IDS = "decoder_input_ids"
PROMPT_LENGTHS = "prompt_lengths"  # each row's prompt tokens: the answer is read at its last one
PASSAGE_STATES = "passage_states"
PASSAGE_MASK = "passage_mask"
MARGINS = "margins"  # logit(yes) - logit(no) at each row's last prompt position
