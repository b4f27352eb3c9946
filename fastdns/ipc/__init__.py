"""Every contract between fastdns processes, in one package.

The supervisor, the control process and the workers share memory and files
whose shape no single process owns: the shared-memory layout (``layout``:
declared once, the Cython fast path's ``.pxi`` generated from it), the
segments and their publish protocol (``shm``), instance ownership
(``reclaim``), the process-level stats words (``stats``), the per-worker
counters with their writer (``counters``), reader (``readout``) and slot
tables (``tables``), and the snapshot image format (``image``). Whatever
two processes must agree on lives here, so neither imports the other's
package for it.
"""
