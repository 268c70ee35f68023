"""The web app for people (``flowstone serve``): systems compared per suite and per case, bake
histories, and the approvals pages, read from what the assets stored.

``links`` is the only module the Dagster wiring may import (asset metadata links into the
viewer); everything else brings Starlette and Jinja2 and is loaded by ``flowstone serve``.
"""
