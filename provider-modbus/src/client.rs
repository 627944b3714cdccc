//! One device's Modbus TCP connection: connect, read a block, write a tag, each within the
//! device's timeout. A transport failure or timeout drops the connection (a late answer must never
//! be taken for the next request's), so the next call reconnects.

use std::fmt;

use tokio::time::timeout;
use tokio_modbus::client::{Context, Reader as _, Writer as _};
use tokio_modbus::{ExceptionCode, Slave};

use crate::codec::Encoded;
use crate::map::{Device, Table};

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    /// The device answered with a Modbus exception; the connection is fine.
    #[error("exception {code} ({name})")]
    Exception {
        /// The exception code (2: illegal data address, 4: device failure, ...).
        code: u8,
        /// Its name.
        name: String,
    },
    /// No connection, or it broke, or the device did not answer in time.
    #[error("{0}")]
    Connection(String),
}

impl From<ExceptionCode> for DeviceError {
    fn from(e: ExceptionCode) -> Self {
        Self::Exception {
            code: u8::from(e),
            name: format!("{e:?}"),
        }
    }
}

/// Data read by one block request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Data {
    /// Coils or discrete inputs.
    Bits(Vec<bool>),
    /// Registers.
    Registers(Vec<u16>),
}

/// A (possibly not yet established) connection to one device.
pub struct Connection {
    device: Device,
    context: Option<Context>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("device", &self.device.name)
            .field("connected", &self.context.is_some())
            .finish()
    }
}

impl Connection {
    /// A connection to `device`, established on first use.
    #[must_use]
    pub fn new(device: Device) -> Self {
        Self { device, context: None }
    }

    /// Whether a connection is open.
    #[must_use]
    pub fn is_connected(&self) -> bool {
        self.context.is_some()
    }

    /// Opens the connection if it is not open.
    pub async fn connect(&mut self) -> Result<(), DeviceError> {
        if self.context.is_some() {
            return Ok(());
        }
        let device = &self.device;
        let attempt = async {
            let addr = tokio::net::lookup_host(&device.address)
                .await?
                .next()
                .ok_or_else(|| std::io::Error::other(format!("{} resolves to no address", device.address)))?;
            tokio_modbus::client::tcp::connect_slave(addr, Slave(device.unit_id)).await
        };
        match timeout(device.timeout, attempt).await {
            Ok(Ok(context)) => {
                self.context = Some(context);
                Ok(())
            }
            Ok(Err(err)) => Err(DeviceError::Connection(format!("connect to {}: {err}", device.address))),
            Err(_) => Err(DeviceError::Connection(format!(
                "connect to {}: no connection within {:?}",
                device.address, device.timeout
            ))),
        }
    }

    /// Drops the connection (the next call reconnects).
    pub fn disconnect(&mut self) {
        self.context = None;
    }

    /// Reads `count` registers or bits of `table` from `start`.
    pub async fn read(&mut self, table: Table, start: u16, count: u16) -> Result<Data, DeviceError> {
        self.connect().await?;
        let limit = self.device.timeout;
        let context = self.context.as_mut().expect("connected");
        let result = match table {
            Table::Coil => timeout(limit, context.read_coils(start, count))
                .await
                .map(|r| r.map(|r| r.map(Data::Bits))),
            Table::DiscreteInput => timeout(limit, context.read_discrete_inputs(start, count))
                .await
                .map(|r| r.map(|r| r.map(Data::Bits))),
            Table::InputRegister => timeout(limit, context.read_input_registers(start, count))
                .await
                .map(|r| r.map(|r| r.map(Data::Registers))),
            Table::HoldingRegister => timeout(limit, context.read_holding_registers(start, count))
                .await
                .map(|r| r.map(|r| r.map(Data::Registers))),
        };
        let data = self.settle(result, || format!("read {table} {start}+{count}"))?;
        let got = match &data {
            Data::Bits(b) => b.len(),
            Data::Registers(r) => r.len(),
        };
        // A device may pad bits up to a whole byte; fewer than asked is a broken answer.
        if got < usize::from(count) {
            self.disconnect();
            return Err(DeviceError::Connection(format!(
                "read {table} {start}+{count} at {}: the device answered {got} values",
                self.device.address
            )));
        }
        Ok(data)
    }

    /// Writes one encoded tag at `address`: FC 5 for a coil, FC 6 for one register, FC 16 (one
    /// request) for several.
    pub async fn write(&mut self, address: u16, value: &Encoded) -> Result<(), DeviceError> {
        self.connect().await?;
        let limit = self.device.timeout;
        let context = self.context.as_mut().expect("connected");
        let result = match value {
            Encoded::Coil(b) => timeout(limit, context.write_single_coil(address, *b)).await,
            Encoded::Registers(r) if r.len() == 1 => timeout(limit, context.write_single_register(address, r[0])).await,
            Encoded::Registers(r) => timeout(limit, context.write_multiple_registers(address, r)).await,
        };
        self.settle(result, || format!("write at {address}"))
    }

    fn settle<T>(
        &mut self,
        result: Result<tokio_modbus::Result<T>, tokio::time::error::Elapsed>,
        what: impl FnOnce() -> String,
    ) -> Result<T, DeviceError> {
        match result {
            Ok(Ok(Ok(value))) => Ok(value),
            Ok(Ok(Err(exception))) => Err(exception.into()),
            Ok(Err(err)) => {
                self.disconnect();
                // tokio-modbus reports a connection the device closed as the last OS error,
                // which reads like nonsense ("operation now in progress"): say what happened.
                let reason = match &err {
                    tokio_modbus::Error::Transport(io) if io.raw_os_error().is_some() => {
                        format!("connection lost ({io})")
                    }
                    other => other.to_string(),
                };
                Err(DeviceError::Connection(format!(
                    "{} at {}: {reason}",
                    what(),
                    self.device.address
                )))
            }
            Err(_) => {
                self.disconnect();
                Err(DeviceError::Connection(format!(
                    "{} at {}: no answer within {:?}",
                    what(),
                    self.device.address,
                    self.device.timeout
                )))
            }
        }
    }
}
