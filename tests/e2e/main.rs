mod azure;
mod inspect;
