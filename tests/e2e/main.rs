mod interop;
mod serve;
mod webhook;
