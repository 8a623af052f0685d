// JGit's smart HTTP server (GitServlet, as Gerrit embeds it) on Jetty, for the engine tests
// (tests/src/jgit.rs). Run with Java's source-file launcher:
//
//   java -cp <jgit, jgit.http.server, jetty9, servlet-api, slf4j jars> jgit_http.java ROOT
//
// Serves every repository under ROOT (URL path = path below ROOT), upload-pack and receive-pack
// for anyone (receive-pack is otherwise only for authenticated users), on a free loopback port,
// which it prints on stdout once it listens.
import java.io.File;
import org.eclipse.jetty.server.Server;
import org.eclipse.jetty.server.ServerConnector;
import org.eclipse.jetty.servlet.ServletContextHandler;
import org.eclipse.jetty.servlet.ServletHolder;
import org.eclipse.jgit.http.server.GitServlet;
import org.eclipse.jgit.transport.ReceivePack;
import org.eclipse.jgit.transport.resolver.FileResolver;

public class JGitHttp {
    public static void main(String[] args) throws Exception {
        GitServlet git = new GitServlet();
        git.setRepositoryResolver(new FileResolver<>(new File(args[0]), true));
        git.setReceivePackFactory((request, db) -> new ReceivePack(db));
        Server server = new Server();
        ServerConnector http = new ServerConnector(server);
        http.setHost("127.0.0.1");
        http.setPort(0);
        server.addConnector(http);
        ServletContextHandler context = new ServletContextHandler();
        context.addServlet(new ServletHolder(git), "/*");
        server.setHandler(context);
        server.start();
        System.out.println(http.getLocalPort());
        System.out.flush();
        server.join();
    }
}
