"""Channels: what A sends B besides the graft of :mod:`commlib.graft`.

* :mod:`commlib.channels.slot`: where a latent message goes in B's prompt, and B reading it there.
* :mod:`commlib.channels.cipher`: CIPHER's expected token embeddings (Pham et al., 2024).
* :mod:`commlib.channels.vocab`: across tokenizers: token distributions through shared tokens; AVP's rosetta.
* :mod:`commlib.channels.interlat`: Interlat's hidden-state trajectories, the adapter and the compressor.

How a task uses a channel is a protocol (:mod:`commlib.protocols`).
"""
