pub use flex;
