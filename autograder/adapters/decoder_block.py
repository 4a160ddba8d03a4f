"""Worker-side helpers of exercises/decoder_block.py: the student's DecoderBlock, built from
the student's own BlockConfig.

Called from the suite as ``worker.adapters.decoder_block.NAME(...)``; see the package docstring."""

from . import _run, load_weights, parameter_table


def block_config(sub, config):
    return sub.load("decoder_block.BlockConfig")(**config)


def parameters(sub, config):
    """``DecoderBlock(BlockConfig(**config))``'s parameters (see ``module_parameters``)."""
    block = sub.load("decoder_block.DecoderBlock")(block_config(sub, config))
    return parameter_table(block)


def forward(sub, config, state_dict, x, *, dtype=None, grad_output=None, kwargs=None):
    """Build the student's block from their own BlockConfig, load weights, run it."""
    block_class = sub.load("decoder_block.DecoderBlock")
    return _run(load_weights(block_class(block_config(sub, config)), state_dict, dtype,
                              "DecoderBlock"), [x], kwargs or {}, grad_output)
