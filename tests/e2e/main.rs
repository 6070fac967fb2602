#[cfg(feature = "aws-iot")]
mod aws;
mod inspect;
