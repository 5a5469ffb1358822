"""The vocabulary every part of Tandem shares on the wire, and its one conversion to ``vlm.v1``.

``tandem.wire.types`` holds the values (``Role``, ``FinishReason``, ``Usage``, ``ModelInfo``,
``ImageInput``, ``ImageRef``) and imports no protos, so the services' domain code can use them;
``tandem.wire.convert`` holds their ``*_from_pb``/``*_to_pb`` pairs, for the edge modules only
(the services' servicers and ``convert`` modules, the gateway's downstream clients, the Python
client). Each domain value has the name of the ``vlm.v1`` message it converts to.
``tandem.wire.late_status`` reads the status of a stream whose answer is already whole, for the
two clients that end their streams at the final message (the gateway's and the Python client).
"""
