"""The ``noxblock`` command line: the one place that joins ``models``, ``scheduler`` and
``ocpp_gateway`` for users."""
