"""The WSGI entry point: ``gunicorn -c config/gunicorn.conf.py wsgi:app``.

gevent must patch the standard library before anything imports ``ssl`` or
``socket`` (the SDKs do): gunicorn's gevent worker patches before it imports
this module, and the line below does it for direct runs and preloading.
"""

from gevent import monkey

monkey.patch_all()

from app import create_app  # noqa: E402

app = create_app()
