//! Hostile callers: connections, headers and bodies that try to hold memory or sockets, and
//! requests a browser can be made to send.
