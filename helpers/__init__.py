"""hands-on Chinese-LLaMA-Alpaca: the tested code behind the course notebooks.

One module per course step (``convert``, ``vocab``, ``merge``, ``infer``, ``webui``, ``train``,
``data``, ``rag``, ``api``, ``export``, ``crawl``) plus small shared core modules
(``core``, ``io``, ``tokenizer``, ``tiny``, ``prompts``, ``modeling``, ``generation``).
"""
__version__ = "0.1.0"

from .core import setup  # noqa: E402,F401  (the one call every notebook makes first)
