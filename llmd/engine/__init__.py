"""The engine: one child process per loaded model, each running a continuous-batching loop.

`client` is the daemon's side (spawn, talk, restart); `messages` what the two sides say to
each other (the request, its sampling parameters, the events back); `worker` is the child's
main; `scheduler` builds and runs each step over the `sequence` state (slots and their cached
tokens, one `Sequence` per choice), `admission` decides which waiting request joins the batch
and in which slots, `text` turns token pieces into the text a client sees; `backend` is what
the scheduler needs from a model; `llama`, with `grammar` for structured output, is the only
code that runs llama.cpp.
"""
