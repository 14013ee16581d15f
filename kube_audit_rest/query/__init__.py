"""``kube-audit-rest query``: answer "who changed what" from the audit log.

One module per step: ``sources`` finds and reads (and follows) the files,
``records`` turns each line of either record format into one view, ``filters``
decides which records match, and ``render_table``, ``diff``, ``kubectl`` and
``output`` print them. ``cli`` wires the flags to those steps.
"""
