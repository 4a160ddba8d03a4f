"""Known mistakes of exercises/seq2seq.py: EncoderLayer, DecoderLayer and Seq2SeqTransformer.
Each is the sentence a student reads when the numbers show it (the suite computes the
wrong values itself, from the reference)."""

PRE_POST = {False: "this is a Pre-LN layer, but prenorm=False asks for Post-LN: x = norm(x + sublayer(x))",
            True: "this is a Post-LN layer, but prenorm=True asks for Pre-LN: x = x + sublayer(norm(x))"}
MASK_REVERSED = "the padding mask is reversed: True marks a real token, padding keys are never attended to"
NO_EMBED_SCALE = "the embeddings are not multiplied by sqrt(d_model) before the positions are added"
NOT_CAUSAL = "the decoder's self-attention is not causal: a target position sees later target tokens"
PADDING_FROM_ZERO = "the padding masks treat token 0 as padding: derive them from self.pad_id"
