mod inspect;
mod interop;
mod serve;
mod webhook;
