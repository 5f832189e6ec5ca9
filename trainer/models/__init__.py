"""Torch models with upstream taming-transformers' state-dict layout.

vqgan: Encoder, Decoder, quantizers, VQModel (the first stage).
mingpt: GPT with a preallocated KV cache, plus the reference decoding loops.
cond: conditioning stages (class label, start token, coordinates, a VQ cond stage).
net2net: Net2NetTransformer, the three stages together.
"""
