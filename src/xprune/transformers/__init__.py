"""Transformers: attention heads and MLP neurons as prunable units, AttnLRP relevance, Hugging Face models.

The unit kinds ``"heads"`` and ``"neurons"`` (:mod:`.kinds`: discovery,
signals, gate sites, masking and removal through :mod:`.surgery`) are
registered lazily in :mod:`xprune.units`, the LLM baselines ``"wanda"``
(structured Wanda) and ``"llm-pruner"`` (LLM-Pruner's Taylor importance,
:mod:`.criteria`) in the criteria registry: nothing needs importing this
package first. Every criterion that reads signals or weights (``"lrp"`` with
AttnLRP / CP-LRP by default, ``"taylor"``, ``"gradient"``, ``"activation"``,
``"weight"``, ``"l2"``, ``"random"``, ``"singe"``) works on these kinds; the
Hugging Face glue of AttnLRP is :func:`attnlrp` (:mod:`.attnlrp`).

Recognised architectures: xprune's ViT, and Hugging Face transformers 5.x
BERT family, ViT, GPT-2 and the Llama family (with grouped-query attention);
see :mod:`.adapters`.

Hugging Face models in and out: :mod:`.hub` loads a local (or locally cached)
model with its tokenizer and image settings (:func:`.hub.load`), reads text
files into splits xprune scores on (:func:`.hub.text_data`) and saves a
pruned model so that it loads back (:func:`.hub.save`, :func:`load_pruned`).

Example::

    import xprune, xprune.transformers
    curve = xprune.evaluate.curve(vit, ref, test, "lrp", units="heads")
    pruned = xprune.prune(model, data, "lrp", 0.3, units="neurons")
    xprune.transformers.hub.save(pruned, "pruned-model")   # reload: xprune.transformers.load_pruned
"""

from . import hub
from .adapters import AttentionSpec, MLPSpec, attention_specs, mlp_specs
from .attnlrp import attnlrp
from .gates import Gates, gates
from .kinds import HeadsKind, NeuronsKind
from .surgery import load_pruned, record_sizes, remove_heads, remove_neurons

__all__ = [
    "AttentionSpec",
    "HeadsKind",
    "MLPSpec",
    "NeuronsKind",
    "Gates",
    "attention_specs",
    "attnlrp",
    "gates",
    "hub",
    "load_pruned",
    "mlp_specs",
    "record_sizes",
    "remove_heads",
    "remove_neurons",
]
