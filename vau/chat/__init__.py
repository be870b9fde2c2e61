"""Chat models shared by the teacher reflection builder and ``python -m vau judge``: backends and a job runner."""

from vau.chat.backends import ChatBackend, ChatError, LocalChat, OpenAIChat, backend_from_options
from vau.chat.parse import first_json_object, prefixed
from vau.chat.runner import ChatRunner, Reply, cache_key, read_cache, runner_from_options

__all__ = ["ChatBackend", "ChatError", "ChatRunner", "LocalChat", "OpenAIChat", "Reply", "backend_from_options",
           "cache_key", "first_json_object", "prefixed", "read_cache", "runner_from_options"]
