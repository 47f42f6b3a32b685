// fjord java runtime: the OpenFaaS java11 contract (com.openfaas.function.Handler, an
// IHandler, usually `extends AbstractHandler`, with `IResponse Handle(IRequest)`) on the JDK's
// own HTTP server (com.sun.net.httpserver) at 127.0.0.1:$PORT, a thread pool for the
// handler calls. One Handler instance, made at start, serves every request (as upstream).
//
// Every method on every path goes to the handler; the body is read whatever the method.
// Keep-alive (idle connections kept 180 s, longer than the gateway's 90 s pool timeout),
// Content-Length and chunked request bodies (chunked with trailers: 400, the JDK server cannot
// read them). A thrown exception gives a 500 (stack trace on
// stderr). SIGTERM: exit 0 once the requests in progress have been answered.
//
// FJORD_JAVA_TRAIN=1 (fjord build only): serve one request with a stand-in handler, then exit,
// so that -XX:ArchiveClassesAtExit archives the classes a start needs (the user's Handler is
// loaded, not run).
package com.openfaas.entrypoint;

import com.openfaas.model.IHandler;
import com.openfaas.model.IRequest;
import com.openfaas.model.IResponse;
import com.openfaas.model.Request;
import com.openfaas.model.Response;
import com.sun.net.httpserver.Headers;
import com.sun.net.httpserver.HttpExchange;
import com.sun.net.httpserver.HttpServer;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.Socket;
import java.nio.charset.StandardCharsets;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;

public final class App {
    private static final Object LOCK = new Object();
    private static int inFlight = 0;

    public static void main(String[] args) throws Exception {
        boolean training = "1".equals(System.getenv("FJORD_JAVA_TRAIN"));
        // Read by the server's configuration when it is first used: set before. TCP_NODELAY:
        // the server writes the head and the body separately, and Nagle with the client's
        // delayed ACK held every answer ~40 ms.
        System.setProperty("sun.net.httpserver.idleInterval", "180");
        System.setProperty("sun.net.httpserver.nodelay", "true");
        int port = 8080;
        String p = System.getenv("PORT");
        if (training) {
            port = 0;
        } else if (p != null && !p.isBlank()) {
            try {
                port = Integer.parseInt(p.trim());
            } catch (NumberFormatException e) {
                System.err.println("PORT=" + p + " is not a port number");
                System.exit(2);
            }
        }
        IHandler handler;
        if (training) {
            Class.forName("com.openfaas.function.Handler", false, App.class.getClassLoader());
            handler = req -> {
                Response r = new Response();
                r.setBody(req.getBody());
                r.setContentType("text/plain");
                return r;
            };
        } else {
            handler = (IHandler) Class.forName("com.openfaas.function.Handler")
                    .getDeclaredConstructor()
                    .newInstance();
        }
        InetAddress loopback = InetAddress.getByName("127.0.0.1");
        HttpServer server = HttpServer.create(new InetSocketAddress(loopback, port), 128);
        ExecutorService pool = Executors.newCachedThreadPool(r -> {
            Thread t = new Thread(r, "fjord-handler");
            t.setDaemon(true);
            return t;
        });
        server.createContext("/", t -> serve(handler, t));
        server.setExecutor(pool);
        Runtime.getRuntime().addShutdownHook(new Thread(App::drain, "fjord-drain"));
        server.start();
        int bound = server.getAddress().getPort();
        if (training) {
            train(bound);
            System.exit(0);
        }
        System.out.println("java function listening on 127.0.0.1:" + bound);
    }

    /** SIGTERM: wait for the requests in progress, then exit 0 (not the JVM's 143). */
    private static void drain() {
        synchronized (LOCK) {
            while (inFlight > 0) {
                try {
                    LOCK.wait();
                } catch (InterruptedException e) {
                    break;
                }
            }
        }
        System.out.flush();
        System.err.flush();
        Runtime.getRuntime().halt(0);
    }

    private static void train(int port) throws IOException {
        try (Socket s = new Socket(InetAddress.getByName("127.0.0.1"), port)) {
            OutputStream out = s.getOutputStream();
            out.write(("POST /train?a=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                    + "Connection: close\r\n\r\nhi").getBytes(StandardCharsets.US_ASCII));
            out.flush();
            s.getInputStream().readAllBytes();
        }
    }

    private static void serve(IHandler handler, HttpExchange t) throws IOException {
        synchronized (LOCK) {
            inFlight++;
        }
        try {
            answer(handler, t);
        } finally {
            t.close();
            synchronized (LOCK) {
                inFlight--;
                LOCK.notifyAll();
            }
        }
    }

    private static void answer(IHandler handler, HttpExchange t) throws IOException {
        byte[] body;
        try (InputStream in = t.getRequestBody()) {
            body = readAll(in);
        } catch (IOException e) {
            // The JDK's server rejects, among others, chunked bodies with trailers.
            byte[] msg = ("Bad Request: " + e.getMessage() + "\n").getBytes(StandardCharsets.UTF_8);
            t.getResponseHeaders().set("Content-Type", "text/plain; charset=utf-8");
            t.getResponseHeaders().set("Connection", "close");
            t.sendResponseHeaders(400, msg.length);
            t.getResponseBody().write(msg);
            return;
        }
        Map<String, String> headers = new HashMap<>();
        for (Map.Entry<String, List<String>> h : t.getRequestHeaders().entrySet()) {
            if (!h.getValue().isEmpty()) {
                headers.put(h.getKey(), h.getValue().get(0));
            }
        }
        IRequest req = new Request(
                body, headers, t.getRequestURI().getRawQuery(), t.getRequestURI().getRawPath());
        int status;
        byte[] out;
        Headers rh = t.getResponseHeaders();
        try {
            IResponse res = handler.Handle(req);
            if (res == null) {
                throw new IllegalStateException("Handle returned null");
            }
            status = res.getStatusCode();
            out = res.getBodyBytes() == null ? new byte[0] : res.getBodyBytes();
            String ct = res.getContentType();
            if (ct != null && !ct.isEmpty()) {
                rh.set("Content-Type", ct);
            }
            for (Map.Entry<String, String> h : res.getHeaders().entrySet()) {
                String v = h.getValue();
                if (v != null && (v.indexOf('\r') >= 0 || v.indexOf('\n') >= 0)) {
                    throw new IllegalArgumentException("header " + h.getKey() + " has a line break");
                }
                rh.set(h.getKey(), v);
            }
            if (status < 100 || status > 999) {
                throw new IllegalArgumentException("status code " + status);
            }
        } catch (Exception e) {
            e.printStackTrace();
            rh.clear();
            rh.set("Content-Type", "text/plain; charset=utf-8");
            status = 500;
            out = "Internal Server Error\n".getBytes(StandardCharsets.UTF_8);
        }
        boolean noBody = status == 204 || status == 304 || status < 200;
        if (t.getRequestMethod().equalsIgnoreCase("HEAD")) {
            rh.set("Content-Length", Integer.toString(out.length));
            t.sendResponseHeaders(status, -1);
        } else if (noBody || out.length == 0) {
            t.sendResponseHeaders(status, -1);
        } else {
            t.sendResponseHeaders(status, out.length);
            try (OutputStream os = t.getResponseBody()) {
                os.write(out);
            }
        }
    }

    private static byte[] readAll(InputStream in) throws IOException {
        ByteArrayOutputStream buf = new ByteArrayOutputStream();
        byte[] chunk = new byte[65536];
        int n;
        while ((n = in.read(chunk)) != -1) {
            buf.write(chunk, 0, n);
        }
        return buf.toByteArray();
    }
}
