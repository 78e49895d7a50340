import SwiftUI

@main
struct AlbertDemoApp: App {
    var body: some Scene {
        WindowGroup {
            ContentView()
        }
    }
}
