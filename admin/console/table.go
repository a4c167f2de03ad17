package console

import (
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// Column types the console answers with (pg_type OIDs).
const (
	oidText = 25
	oidInt8 = 20
)

// table is one SHOW answer: typed columns, rows of text values (nil is
// NULL), as the simple query protocol sends them.
type table struct {
	cols []column
	rows [][][]byte
}

type column struct {
	name string
	oid  uint32
}

func textCols(names ...string) []column {
	out := make([]column, len(names))
	for i, n := range names {
		out[i] = column{n, oidText}
	}
	return out
}

func intCols(names ...string) []column {
	out := make([]column, len(names))
	for i, n := range names {
		out[i] = column{n, oidInt8}
	}
	return out
}

// cols joins column groups.
func cols(groups ...[]column) []column {
	var out []column
	for _, g := range groups {
		out = append(out, g...)
	}
	return out
}

// add appends a row; values are string, int, int64, uint64, uint32,
// bool, time.Time (zero: NULL) or nil (NULL).
func (t *table) add(vals ...any) {
	row := make([][]byte, len(vals))
	for i, v := range vals {
		row[i] = value(v)
	}
	t.rows = append(t.rows, row)
}

func value(v any) []byte {
	switch x := v.(type) {
	case nil:
		return nil
	case string:
		return []byte(x)
	case int:
		return strconv.AppendInt(nil, int64(x), 10)
	case int64:
		return strconv.AppendInt(nil, x, 10)
	case uint64:
		return strconv.AppendUint(nil, x, 10)
	case uint32:
		return strconv.AppendUint(nil, uint64(x), 10)
	case bool:
		if x {
			return []byte("1")
		}
		return []byte("0")
	case time.Time:
		if x.IsZero() {
			return nil
		}
		return []byte(timestamp(x))
	}
	panic("console: no text form for a value of this type")
}

// timestamp is PgBouncer's time format, in UTC.
func timestamp(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05 MST") }

// messages encodes the table as RowDescription, DataRows and
// CommandComplete tag.
func (t *table) messages(tag string) []pgproto3.BackendMessage {
	rd := &pgproto3.RowDescription{Fields: make([]pgproto3.FieldDescription, len(t.cols))}
	for i, c := range t.cols {
		size := int16(-1)
		if c.oid == oidInt8 {
			size = 8
		}
		rd.Fields[i] = pgproto3.FieldDescription{Name: []byte(c.name), DataTypeOID: c.oid, DataTypeSize: size, TypeModifier: -1}
	}
	out := make([]pgproto3.BackendMessage, 0, len(t.rows)+2)
	out = append(out, rd)
	for _, r := range t.rows {
		out = append(out, &pgproto3.DataRow{Values: r})
	}
	return append(out, &pgproto3.CommandComplete{CommandTag: []byte(tag)})
}
