"""The WSGI entry point: ``gunicorn -c examples/chat_app/gunicorn.conf.py examples.chat_app.wsgi:app``."""

import logging

from examples.chat_app import create_app

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

app = create_app()
