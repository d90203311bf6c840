// The JDBC driver's part of the driver matrix (tests/tests/drivers.rs): a fixed script of
// statements run through pgjdbc against the database named on the command line, writing one
// line per operation to the result file, so that the run through shardgate can be compared
// with the run against one plain PostgreSQL holding the same rows.
//
// Usage: java -cp DIR:/usr/share/java/postgresql.jar JdbcMatrix postgres://USER:PASSWORD@HOST:PORT/DB RESULT_FILE
//
// Keys (customers.id = orders.customer_id) of this program, 4 hash partitions, s0 owning
// remainders 0 and 2, s1 owning 1 and 3 (the test checks the placement):
//   s0: 1000 1001 1002 1008 1010 1011 1014 1016 1017 1018
//   s1: 1003 1004 1005 1006 1007 1009 1012 1013 1015 1019
// Rows it inserts have order ids from 1100000 up.

import java.io.PrintWriter;
import java.net.URI;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;

public class JdbcMatrix {
    static final long[] S0 = {1000, 1001, 1002, 1008, 1010, 1011, 1014, 1016, 1017, 1018};
    static final long[] S1 = {1003, 1004, 1005, 1006, 1007, 1009, 1012, 1013, 1015, 1019};

    static String jdbcUrl;
    static String user;
    static String password;
    static final List<String> out = new ArrayList<>();

    public static void main(String[] args) throws Exception {
        if (args.length != 2) {
            System.err.println("usage: JdbcMatrix postgres://USER:PASSWORD@HOST:PORT/DB RESULT_FILE");
            System.exit(2);
        }
        URI uri = new URI(args[0]);
        String[] userInfo = uri.getUserInfo().split(":", 2);
        user = userInfo[0];
        password = userInfo[1];
        jdbcUrl = "jdbc:postgresql://" + uri.getHost() + ":" + uri.getPort() + uri.getPath();

        // A transaction whose first statement is a prepared keyed SELECT, then an UPDATE of
        // the same key, COMMIT; and the same in autocommit. Each of the 8 combinations of
        // autocommit, prepareThreshold and fetch size gets a key of its own on each shard, and
        // runs 6 times so that the server-side prepare of threshold 5 kicks in.
        int combination = 0;
        for (boolean autoCommit : new boolean[] {false, true}) {
            for (int threshold : new int[] {1, 5}) {
                for (int fetchSize : new int[] {0, 2}) {
                    for (long[] shard : new long[][] {S1, S0}) {
                        long key = shard[combination];
                        selectThenUpdate(autoCommit, threshold, fetchSize, key);
                    }
                    combination++;
                }
            }
        }

        // executeBatch of 20 INSERTs whose keys all live on one shard, in a transaction and in
        // autocommit, for each shard.
        long orderId = 1100000;
        int batch = 0;
        for (boolean autoCommit : new boolean[] {false, true}) {
            for (int s = 0; s < 2; s++) {
                long[] keys = s == 0 ? new long[] {S0[8], S0[9]} : new long[] {S1[8], S1[9]};
                insertBatch(autoCommit, "s" + s, keys, orderId, batch);
                orderId += 100;
                batch++;
            }
        }

        // Every key's orders afterwards, read one key at a time (prepared, autocommit).
        try (Connection c = connect(1, true)) {
            try (PreparedStatement ps = c.prepareStatement(
                    "SELECT count(*), sum(amount) FROM orders WHERE customer_id = ?")) {
                for (long[] shard : new long[][] {S0, S1}) {
                    for (long key : shard) {
                        String label = "final orders key=" + key;
                        try {
                            ps.setLong(1, key);
                            emit(label, rows(ps.executeQuery()));
                        } catch (SQLException e) {
                            emitError(label, e);
                        }
                    }
                }
            }
            // An IN list over keys of both shards (no ORDER BY: rows are sorted here).
            String label = "in-list both shards";
            try (PreparedStatement ps = c.prepareStatement(
                    "SELECT id, customer_id, amount FROM orders WHERE customer_id IN (?, ?) AND id < 1000000")) {
                ps.setLong(1, S0[0]);
                ps.setLong(2, S1[0]);
                List<String> r = rowList(ps.executeQuery());
                r.sort(null);
                emit(label, "[" + String.join(",", r) + "]");
            } catch (SQLException e) {
                emitError(label, e);
            }
        }

        Files.write(Paths.get(args[1]), out, StandardCharsets.UTF_8);
    }

    static Connection connect(int prepareThreshold, boolean autoCommit) throws SQLException {
        Properties p = new Properties();
        p.setProperty("user", user);
        p.setProperty("password", password);
        p.setProperty("prepareThreshold", Integer.toString(prepareThreshold));
        Connection c = DriverManager.getConnection(jdbcUrl, p);
        c.setAutoCommit(autoCommit);
        return c;
    }

    static void selectThenUpdate(boolean autoCommit, int threshold, int fetchSize, long key)
            throws SQLException {
        String shard = contains(S0, key) ? "s0" : "s1";
        String base = "select-update autocommit=" + autoCommit + " threshold=" + threshold
                + " fetch=" + fetchSize + " key=" + key + "/" + shard;
        try (Connection c = connect(threshold, autoCommit);
                PreparedStatement sel = c.prepareStatement(
                        "SELECT id, amount FROM orders WHERE customer_id = ? ORDER BY id");
                PreparedStatement upd = c.prepareStatement(
                        "UPDATE orders SET amount = amount + 1 WHERE customer_id = ?")) {
            if (fetchSize > 0) {
                sel.setFetchSize(fetchSize);
            }
            for (int run = 1; run <= 6; run++) {
                String label = base + " run=" + run;
                String step = "select";
                try {
                    sel.setLong(1, key);
                    emit(label + " select", rows(sel.executeQuery()));
                    step = "update";
                    upd.setLong(1, key);
                    emit(label + " update", Integer.toString(upd.executeUpdate()));
                    if (!autoCommit) {
                        step = "commit";
                        c.commit();
                        emit(label + " commit", "ok");
                    }
                } catch (SQLException e) {
                    emitError(label + " " + step, e);
                    if (!autoCommit) {
                        rollback(c, label);
                    }
                }
            }
        }
    }

    static void insertBatch(boolean autoCommit, String shard, long[] keys, long firstId, int batch)
            throws SQLException {
        String label = "batch autocommit=" + autoCommit + " " + shard + " keys=" + keys[0] + "," + keys[1];
        try (Connection c = connect(5, autoCommit);
                PreparedStatement ins = c.prepareStatement(
                        "INSERT INTO orders (id, customer_id, amount) VALUES (?, ?, ?)")) {
            for (int i = 0; i < 20; i++) {
                ins.setLong(1, firstId + i);
                ins.setLong(2, keys[i % 2]);
                ins.setBigDecimal(3, new java.math.BigDecimal((batch * 100 + i) + ".25"));
                ins.addBatch();
            }
            String step = "execute";
            try {
                int[] counts = ins.executeBatch();
                StringBuilder sb = new StringBuilder("[");
                for (int i = 0; i < counts.length; i++) {
                    sb.append(i == 0 ? "" : ",").append(counts[i]);
                }
                emit(label + " execute", sb.append("]").toString());
                if (!autoCommit) {
                    step = "commit";
                    c.commit();
                    emit(label + " commit", "ok");
                }
            } catch (SQLException e) {
                emitError(label + " " + step, e);
                if (!autoCommit) {
                    rollback(c, label);
                }
            }
            if (!autoCommit) {
                c.setAutoCommit(true);
            }
            // Read back by the IN list of the batch's two keys (both on one shard).
            try (PreparedStatement ps = c.prepareStatement(
                    "SELECT count(*), sum(amount) FROM orders WHERE customer_id IN (?, ?) AND id >= ?")) {
                ps.setLong(1, keys[0]);
                ps.setLong(2, keys[1]);
                ps.setLong(3, firstId);
                emit(label + " read back", rows(ps.executeQuery()));
            } catch (SQLException e) {
                emitError(label + " read back", e);
            }
        }
    }

    static void rollback(Connection c, String label) {
        try {
            c.rollback();
        } catch (SQLException e) {
            emitError(label + " rollback", e);
        }
    }

    static boolean contains(long[] keys, long key) {
        for (long k : keys) {
            if (k == key) {
                return true;
            }
        }
        return false;
    }

    static String rows(ResultSet rs) throws SQLException {
        return "[" + String.join(",", rowList(rs)) + "]";
    }

    /** Each row as a JSON array of its columns' text (null for NULL). */
    static List<String> rowList(ResultSet rs) throws SQLException {
        List<String> rows = new ArrayList<>();
        int n = rs.getMetaData().getColumnCount();
        while (rs.next()) {
            StringBuilder sb = new StringBuilder("[");
            for (int i = 1; i <= n; i++) {
                String v = rs.getString(i);
                sb.append(i == 1 ? "" : ",").append(v == null ? "null" : json(v));
            }
            rows.add(sb.append("]").toString());
        }
        rs.close();
        return rows;
    }

    static String json(String s) {
        StringBuilder sb = new StringBuilder("\"");
        for (char ch : s.toCharArray()) {
            if (ch == '"' || ch == '\\') {
                sb.append('\\').append(ch);
            } else if (ch < 0x20) {
                sb.append(String.format("\\u%04x", (int) ch));
            } else {
                sb.append(ch);
            }
        }
        return sb.append('"').toString();
    }

    static void emit(String label, String result) {
        out.add(label + ": " + result);
    }

    /** The result line carries the SQLSTATE only; the message goes to stdout for people. */
    static void emitError(String label, SQLException e) {
        out.add(label + ": ERROR " + e.getSQLState());
        System.out.println(label + ": ERROR " + e.getSQLState() + " " + e.getMessage());
    }
}
